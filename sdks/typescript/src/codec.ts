// The wire format of docs/PROTOCOL.md §2 and §4: QUIC varints, length-prefixed frames, and
// the frames a client sends and receives. Pure functions over bytes; no IO.

/** Frame types (docs/PROTOCOL.md §4). */
export const enum Kind {
  Hello = 0x01,
  Welcome = 0x02,
  Ping = 0x03,
  Pong = 0x04,
  Error = 0x05,
  GoAway = 0x06,
  Pub = 0x10,
  Sub = 0x11,
  Unsub = 0x12,
  SubAck = 0x13,
  Msg = 0x14,
  Dropped = 0x15,
  PubStream = 0x16,
  MsgStream = 0x17,
  Reg = 0x20,
  Unreg = 0x21,
  RegAck = 0x22,
  Call = 0x23,
  Request = 0x24,
  Respond = 0x25,
  Result = 0x26,
  Cancel = 0x27,
  Notice = 0x28,
  Tools = 0x29,
  ToolList = 0x2a,
  ToolsChanged = 0x2b,
  Data = 0x2c,
  Credit = 0x2d,
}

/** The protocol version this SDK speaks. */
export const VERSION = 8;

/** `CALL`/`REQUEST` flags (v5, docs/PROTOCOL.md §4.4). */
export const CallFlags = { StreamRequest: 1, StreamAnswer: 2, Idempotent: 4 } as const;
/** `DATA`/`CREDIT` flags (v5; `Message` and `Cut` v6, docs/PROTOCOL.md §4.5). */
export const DataFlags = { Answer: 1, End: 2, Message: 4, Cut: 8 } as const;

/** `NOTICE` kinds (docs/PROTOCOL.md §4.2, §4.7). */
export const NoticeKind = { Progress: 1, Log: 2, Question: 3, Reply: 4 } as const;
/** Bytes an answer's sender may send before any `CREDIT`; a request starts with none. */
export const INITIAL_CREDIT = 256 * 1024;
/** The largest frame the protocol allows: 1 MiB + 32 KiB. */
export const MAX_FRAME = (1 << 20) + 32 * 1024;

/** Message headers: names to values. */
export type Headers = Record<string, string>;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

/** A malformed frame from the node. */
export class DecodeError extends Error {}

/** Builds one frame's body, then the frame. */
export class Encoder {
  private parts: Uint8Array[] = [];
  private size = 0;

  varint(v: number): this {
    this.push(encodeVarint(v));
    return this;
  }

  bytes(b: Uint8Array): this {
    this.varint(b.length);
    this.push(b);
    return this;
  }

  str(s: string): this {
    return this.bytes(utf8.encode(s));
  }

  headers(h: Headers | undefined): this {
    const pairs = h ? Object.entries(h) : [];
    this.varint(pairs.length);
    for (const [k, v] of pairs) this.str(k).str(v);
    return this;
  }

  /** The frame: `length type body`. */
  frame(kind: Kind): Uint8Array {
    const type = encodeVarint(kind);
    const len = encodeVarint(type.length + this.size);
    const out = new Uint8Array(len.length + type.length + this.size);
    out.set(len, 0);
    out.set(type, len.length);
    let at = len.length + type.length;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  private push(b: Uint8Array): void {
    this.parts.push(b);
    this.size += b.length;
  }
}

/** A QUIC variable-length integer, shortest form. Values above 2^53 are not used here. */
export function encodeVarint(v: number): Uint8Array {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`varint out of range: ${v}`);
  if (v < 0x40) return Uint8Array.of(v);
  if (v < 0x4000) return Uint8Array.of(0x40 | (v >>> 8), v & 0xff);
  if (v < 0x40000000) return Uint8Array.of(0x80 | (v >>> 24), (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
  const hi = Math.floor(v / 0x100000000);
  const lo = v >>> 0;
  return Uint8Array.of(
    0xc0 | (hi >>> 24), (hi >>> 16) & 0xff, (hi >>> 8) & 0xff, hi & 0xff,
    lo >>> 24, (lo >>> 16) & 0xff, (lo >>> 8) & 0xff, lo & 0xff,
  );
}

/** Reads fields from one frame's body, in order. */
export class Reader {
  private at = 0;
  constructor(private readonly buf: Uint8Array) {}

  varint(): number {
    if (this.at >= this.buf.length) throw new DecodeError("truncated varint");
    const first = this.buf[this.at];
    const len = 1 << (first >> 6);
    if (this.at + len > this.buf.length) throw new DecodeError("truncated varint");
    let v = first & 0x3f;
    for (let i = 1; i < len; i++) v = v * 256 + this.buf[this.at + i];
    this.at += len;
    return v;
  }

  bytes(): Uint8Array {
    const n = this.varint();
    if (this.at + n > this.buf.length) throw new DecodeError("field longer than its frame");
    const out = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }

  str(): string {
    try {
      return fromUtf8.decode(this.bytes());
    } catch (e) {
      if (e instanceof DecodeError) throw e;
      throw new DecodeError("a text field is not UTF-8");
    }
  }

  headers(): Headers {
    const n = this.varint();
    if (n > 64) throw new DecodeError(`${n} headers (at most 64)`);
    const h: Headers = {};
    for (let i = 0; i < n; i++) {
      const k = this.str();
      h[k] = this.str();
    }
    return h;
  }

  /** Whether fields remain (a later version appends some). */
  more(): boolean {
    return this.at < this.buf.length;
  }
}

/** A frame from the node, decoded. Unknown fields at a frame's end are ignored (§2). */
export type Frame =
  | { kind: Kind.Welcome; version: number; node: string; connectionId: number; maxPayload: number }
  | { kind: Kind.Ping | Kind.Pong; token: number }
  | { kind: Kind.Error; code: number; reference: number; message: string }
  | { kind: Kind.GoAway; code: number; message: string }
  | { kind: Kind.SubAck | Kind.RegAck | Kind.Cancel | Kind.ToolsChanged; id: number }
  | { kind: Kind.Msg; sid: number; topic: string; headers: Headers; payload: Uint8Array }
  | { kind: Kind.Dropped; sid: number; count: number }
  | { kind: Kind.MsgStream; sid: number; id: number; topic: string; headers: Headers; payload: Uint8Array }
  | { kind: Kind.Request; reqId: number; rid: number; timeoutMs: number; headers: Headers; payload: Uint8Array; flags: number }
  | { kind: Kind.Data; id: number; flags: number; chunk: Uint8Array }
  | { kind: Kind.Credit; id: number; flags: number; bytes: number }
  | { kind: Kind.Result; callId: number; code: number; headers: Headers; payload: Uint8Array }
  | { kind: Kind.Notice; id: number; noticeKind: number; body: Uint8Array }
  | { kind: Kind.ToolList; id: number; next: string; tools: Uint8Array };

/** Decodes one frame's type and body (as the node sends them). */
export function decodeFrame(kind: number, body: Uint8Array): Frame {
  const r = new Reader(body);
  switch (kind) {
    case Kind.Welcome:
      return { kind, version: r.varint(), node: r.str(), connectionId: r.varint(), maxPayload: r.varint() };
    case Kind.Ping:
    case Kind.Pong:
      return { kind, token: r.varint() };
    case Kind.Error:
      return { kind, code: r.varint(), reference: r.varint(), message: r.str() };
    case Kind.GoAway:
      return { kind, code: r.varint(), message: r.str() };
    case Kind.SubAck:
    case Kind.RegAck:
    case Kind.Cancel:
    case Kind.ToolsChanged:
      return { kind, id: r.varint() };
    case Kind.Msg:
      return { kind, sid: r.varint(), topic: r.str(), headers: r.headers(), payload: r.bytes() };
    case Kind.Dropped:
      return { kind, sid: r.varint(), count: r.varint() };
    case Kind.MsgStream:
      return { kind, sid: r.varint(), id: r.varint(), topic: r.str(), headers: r.headers(), payload: r.bytes() };
    case Kind.Request:
      return {
        kind,
        reqId: r.varint(),
        rid: r.varint(),
        timeoutMs: r.varint(),
        headers: r.headers(),
        payload: r.bytes(),
        flags: r.more() ? r.varint() : 0,
      };
    case Kind.Data:
      return { kind, id: r.varint(), flags: r.varint(), chunk: r.bytes() };
    case Kind.Credit:
      return { kind, id: r.varint(), flags: r.varint(), bytes: r.varint() };
    case Kind.Result:
      return { kind, callId: r.varint(), code: r.varint(), headers: r.headers(), payload: r.bytes() };
    case Kind.Notice:
      return { kind, id: r.varint(), noticeKind: r.varint(), body: r.bytes() };
    case Kind.ToolList:
      return { kind, id: r.varint(), next: r.str(), tools: r.bytes() };
    default:
      throw new DecodeError(`unknown frame type 0x${kind.toString(16)}`);
  }
}

/** Reassembles frames from a byte stream cut anywhere (docs/PROTOCOL.md §1.2). */
export class Deframer {
  private buf = new Uint8Array(0);
  private start = 0;

  constructor(private readonly maxFrame = MAX_FRAME) {}

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    const rest = this.buf.length - this.start;
    if (rest === 0) {
      this.buf = chunk;
    } else {
      const joined = new Uint8Array(rest + chunk.length);
      joined.set(this.buf.subarray(this.start), 0);
      joined.set(chunk, rest);
      this.buf = joined;
    }
    this.start = 0;
  }

  /** The next whole frame's type and body, or `undefined` until more bytes arrive. */
  next(): { kind: number; body: Uint8Array } | undefined {
    const avail = this.buf.length - this.start;
    if (avail === 0) return undefined;
    const r = new Reader(this.buf.subarray(this.start));
    const first = this.buf[this.start];
    if (avail < 1 << (first >> 6)) return undefined;
    const len = r.varint();
    const lenSize = 1 << (first >> 6);
    if (len < 1 || len > this.maxFrame) throw new DecodeError(`frame length ${len} out of range`);
    if (avail < lenSize + len) return undefined;
    const frame = this.buf.subarray(this.start + lenSize, this.start + lenSize + len);
    this.start += lenSize + len;
    const fr = new Reader(frame);
    const kind = fr.varint();
    const typeSize = 1 << (frame[0] >> 6);
    return { kind, body: frame.subarray(typeSize) };
  }
}

/** Bytes of a payload given as text or bytes. */
export function toBytes(p: string | Uint8Array): Uint8Array {
  return typeof p === "string" ? utf8.encode(p) : p;
}
