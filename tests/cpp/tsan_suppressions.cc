// ThreadSanitizer suppressions for what TSan cannot see (REFERENCE.md,
// section 6), compiled into every C++ test so that they apply however the
// test is run. Unused outside --config=tsan.
//
// Debian's Abseil is not instrumented. absl::Status shares its payload
// between threads with an atomic reference count whose final decrement
// (Status::UnrefNonInlined) is inside libabsl, so TSan sees the delete but
// not the acquire that orders it after the other thread's last use.
extern "C" const char* __tsan_default_suppressions() {
  return "race:absl::*::Status::Unref\n";
}
