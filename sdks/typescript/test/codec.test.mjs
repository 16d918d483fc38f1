// The codec against docs/PROTOCOL.md's hex examples (the Rust codec's test vectors).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Deframer, Encoder, decodeFrame, encodeVarint } from "../dist/codec.js";

const hex = (s) => Uint8Array.from(s.split(" ").map((b) => parseInt(b, 16)));
const text = (s) => new TextEncoder().encode(s);

test("varints take the shortest form", () => {
  assert.deepEqual(encodeVarint(37), hex("25"));
  assert.deepEqual(encodeVarint(15293), hex("7b bd"));
  assert.deepEqual(encodeVarint(1048576), hex("80 10 00 00"));
  assert.deepEqual(encodeVarint(2 ** 40), hex("c0 00 01 00 00 00 00 00"));
  assert.throws(() => encodeVarint(-1), RangeError);
});

test("client frames match the protocol's examples", () => {
  // SUB sid 2 to jobs.> in queue group workers.
  assert.deepEqual(
    new Encoder().varint(2).str("jobs.>").str("workers").frame(0x11),
    hex("11 11 02 06 6a 6f 62 73 2e 3e 07 77 6f 72 6b 65 72 73"),
  );
  // CALL id 5 to math.add, 5000 ms, no headers, payload [1,2].
  assert.deepEqual(
    new Encoder().varint(5).str("math.add").varint(5000).headers({}).bytes(text("[1,2]")).frame(0x23),
    hex("14 23 05 08 6d 61 74 68 2e 61 64 64 53 88 00 05 5b 31 2c 32 5d"),
  );
  // RESPOND 9, success, payload 3.
  assert.deepEqual(new Encoder().varint(9).varint(0).headers({}).bytes(text("3")).frame(0x25), hex("06 25 09 00 00 01 33"));
});

test("node frames decode as the protocol says, whatever the chunking", () => {
  const bytes = [
    ...hex("0a 26 06 41 07 00 04 6e 6f 6e 65"), // RESULT call 6, NO_PROVIDER, "none"
    ...hex("08 05 41 02 03 03 62 61 64"), // ERROR INVALID_PATTERN for sid 3, "bad"
    ...hex("03 06 07 00"), // GOAWAY GOING_AWAY
  ];
  for (const cut of [1, 2, 5, bytes.length]) {
    const d = new Deframer();
    const frames = [];
    for (let i = 0; i < bytes.length; i += cut) {
      d.push(Uint8Array.from(bytes.slice(i, i + cut)));
      for (let f = d.next(); f; f = d.next()) frames.push(decodeFrame(f.kind, f.body));
    }
    assert.equal(frames.length, 3, `cut ${cut}`);
    assert.deepEqual({ ...frames[0], payload: [...frames[0].payload] }, { kind: 0x26, callId: 6, code: 0x107, headers: {}, payload: [...text("none")] });
    assert.deepEqual(frames[1], { kind: 0x05, code: 0x102, reference: 3, message: "bad" });
    assert.deepEqual(frames[2], { kind: 0x06, code: 7, message: "" });
  }
});

test("a malformed frame is an error, not a crash", () => {
  const d = new Deframer(100);
  d.push(hex("80 10 00 00"));
  assert.throws(() => d.next(), /out of range/);
  assert.throws(() => decodeFrame(0x7f, new Uint8Array()), /unknown frame type/);
  assert.throws(() => decodeFrame(0x05, hex("41")), /truncated/);
});
