// ThreadSanitizer suppressions for what TSan cannot see (REFERENCE.md,
// section 6), compiled into every C++ test so that they apply however the
// test is run. Unused outside --config=tsan. Pinned by
// tsan_suppressions_test.cc, which fails without them.
//
// Debian's Abseil is not instrumented. An absl::Status shares its payload
// (the ErrorInfo reason, the JSON-RPC error) between its copies with an
// atomic reference count whose decrements are inside libabsl_status
// (Status::UnrefNonInlined), so TSan sees the delete of the last copy but
// not the acquire that orders it after the other threads' last use of
// theirs. That is a false report: the count is correct, it is only
// invisible. It showed in sidecar_pool_test (a queue timeout's status
// released on the scheduler thread while the test thread read its reason),
// about 1 run in 7, and in client_test.
//
// Two shapes of the same report, each with its own line:
//   * called_from_lib:libabsl_status.so: TSan ignores the interceptors
//     (new/delete, memcmp, ...) that libabsl_status calls itself, and only
//     those: the memory it frees (a payload's storage, from
//     DestroyContents) has its access history cleared instead of checked.
//   * race:absl::*::Status::Unref: the last `delete` of a StatusRep is a
//     tail call in libabsl_status, so its caller looks like our own inline
//     Status::Unref and called_from_lib cannot see it; this matches exactly
//     the reports whose stack holds Status::Unref, which only frees a
//     StatusRep whose count reached zero.
// Code of ours that reads or writes a Status object (inline in the
// headers, so instrumented) is still checked as before; ASan checks the
// frees themselves.
extern "C" const char* __tsan_default_suppressions() {
  return "called_from_lib:libabsl_status.so\n"
         "race:absl::*::Status::Unref\n";
}
