#!/usr/bin/env node
// llmbridge example client in Node.js (@grpc/grpc-js).
//
// 1. Streams a completion and prints the text as it arrives, then the usage.
// 2. Makes a call that fails (an unknown model) and prints the gRPC status code
//    and the ErrorInfo reason from the rich error details (google.rpc.Status in
//    the grpc-status-details-bin trailer).
//
// Usage: node client.js [ADDRESS]   (default: $LLMBRIDGE_ADDRESS or 127.0.0.1:50051)
// With $LLMBRIDGE_TOKEN set, every call sends `authorization: Bearer <token>`
// (for a server started with --auth_token_file).
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');
const TIMEOUT_MS = 60_000;

// The stubs, loaded from proto/ at run time.
const definition = protoLoader.loadSync('llmbridge/v1/llmbridge.proto', {
  includeDirs: [PROTO_DIR], keepCase: true, longs: String, enums: String, defaults: true,
});
const { LocalLLM } = grpc.loadPackageDefinition(definition).llmbridge.v1;

// The few google.rpc types needed to read the error details, as in
// googleapis' google/rpc/status.proto and google/rpc/error_details.proto.
const rpcTypes = new protobuf.Root();
protobuf.parse(`syntax = "proto3"; package google.protobuf;
  message Any { string type_url = 1; bytes value = 2; }
  message Duration { int64 seconds = 1; int32 nanos = 2; }`, rpcTypes, { keepCase: true });
protobuf.parse(`syntax = "proto3"; package google.rpc;
  message Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
  message RetryInfo { google.protobuf.Duration retry_delay = 1; }`, rpcTypes, { keepCase: true });
const Status = rpcTypes.lookupType('google.rpc.Status');
const ErrorInfo = rpcTypes.lookupType('google.rpc.ErrorInfo');
const RetryInfo = rpcTypes.lookupType('google.rpc.RetryInfo');

function deadline() {
  return new Date(Date.now() + TIMEOUT_MS);
}

// The bearer token from $LLMBRIDGE_TOKEN, as call metadata. Over a plaintext
// channel it crosses the network readable: use TLS beyond loopback or a pod.
function authMetadata() {
  const metadata = new grpc.Metadata();
  if (process.env.LLMBRIDGE_TOKEN) {
    metadata.set('authorization', `Bearer ${process.env.LLMBRIDGE_TOKEN}`);
  }
  return metadata;
}

async function streamCompletion(client) {
  console.log('== Complete (streaming)');
  const call = client.Complete({ messages: [{ role: 'user', content: 'Say hello.' }] },
    authMetadata(), { deadline: deadline() });
  for await (const response of call) {
    process.stdout.write(response.content); // each text delta as it arrives
    if (response.done) {
      const u = response.usage;
      console.log(`\nusage: input_tokens=${u.input_tokens} output_tokens=${u.output_tokens} ` +
        `total_tokens=${u.total_tokens}`);
      console.log(`finish_reason: ${response.finish_reason}  model: ${response.model}`);
    }
  }
}

function printError(err) {
  console.log(`code: ${grpc.status[err.code]}`); // e.g. NOT_FOUND
  console.log(`message: ${err.details}`);
  let reason = '<none>';
  const [detailsBin] = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  const details = detailsBin ? Status.decode(detailsBin).details : [];
  for (const detail of details) {
    if (detail.type_url.endsWith('/google.rpc.ErrorInfo')) {
      const info = ErrorInfo.decode(detail.value);
      reason = info.reason;
      console.log(`domain: ${info.domain}`);
      const pairs = Object.keys(info.metadata).sort().map((k) => `${k}=${info.metadata[k]}`);
      console.log(`metadata: ${pairs.join(' ')}`);
    } else if (detail.type_url.endsWith('/google.rpc.RetryInfo')) {
      const delay = RetryInfo.decode(detail.value).retry_delay || {};
      console.log(`retry after: ${Number(delay.seconds || 0) + (delay.nanos || 0) / 1e9}s`);
    }
  }
  console.log(`reason: ${reason}`);
}

async function failingCall(client) {
  console.log('== Complete with an unknown model (fails)');
  const call = client.Complete(
    { model: 'no-such-model', messages: [{ role: 'user', content: 'Hi' }] },
    authMetadata(), { deadline: deadline() });
  try {
    for await (const response of call) console.log(`unexpected: ${JSON.stringify(response)}`);
  } catch (err) {
    printError(err);
    return;
  }
  throw new Error('the call with an unknown model succeeded');
}

async function main() {
  const address = process.argv[2] || process.env.LLMBRIDGE_ADDRESS || '127.0.0.1:50051';
  const client = new LocalLLM(address, grpc.credentials.createInsecure());
  try {
    await streamCompletion(client);
    await failingCall(client);
  } finally {
    client.close();
  }
}

main().catch((err) => {
  console.log();
  if (err.code !== undefined && err.metadata) printError(err); // a gRPC error
  else console.error(err);
  process.exitCode = 1;
});
