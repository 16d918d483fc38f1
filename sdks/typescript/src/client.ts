// The client: one WebSocket to a node (docs/PROTOCOL.md §1.2), the session on it, and
// reconnection that restores subscriptions and registrations, as the Rust SDK does.

import {
  Deframer,
  Encoder,
  Kind,
  VERSION,
  decodeFrame,
  toBytes,
  type Frame,
  type Headers,
} from "./codec.js";
import {
  AuthError,
  ClosedError,
  Code,
  ConnectError,
  DisconnectedError,
  FoveaError,
  RefusedError,
  TimeoutError,
  resultError,
} from "./errors.js";

/** A payload: text (sent as UTF-8) or bytes. */
export type Payload = string | Uint8Array;

/** The WebSocket constructor this SDK uses (the platform's by default). */
export type WebSocketLike = new (url: string) => WebSocket;

/** Options of {@link connect}. */
export interface ConnectOptions {
  /** The realm to join (default `"default"`). */
  realm?: string;
  /** The credential (a token) for the realm. */
  token?: string | Uint8Array;
  /** A name for this client, shown in the node's `/connections`. */
  name?: string;
  /** Reconnect after losing the connection (default true). */
  reconnect?: boolean;
  /** Longest wait between reconnection attempts, ms (default 2000). */
  maxReconnectDelay?: number;
  /** How long the first connection may take, ms (default 10000). */
  connectTimeout?: number;
  /** Bytes of publishes kept while disconnected (default 8 MiB); past it `publish` throws. */
  maxBuffered?: number;
  /** Messages queued per subscription before the newest are dropped and counted (default 65536). */
  maxPending?: number;
  /** The WebSocket implementation (default `globalThis.WebSocket`: browsers, Node 22+). */
  WebSocket?: WebSocketLike;
}

/** What the node said about itself in `WELCOME`. */
export interface ServerInfo {
  node: string;
  version: number;
  connectionId: number;
  maxPayload: number;
}

const decoder = new TextDecoder();
/** Largest WebSocket message sent; more bytes go in more messages. */
const WS_MESSAGE = 256 * 1024;

/** A message delivered to a subscription. */
export class Message {
  constructor(
    readonly topic: string,
    readonly headers: Headers,
    readonly payload: Uint8Array,
  ) {}

  /** The payload as UTF-8 text. */
  text(): string {
    return decoder.decode(this.payload);
  }

  /** The payload parsed as JSON. */
  json(): unknown {
    return JSON.parse(this.text());
  }
}

/** A bounded queue read with `for await`; ended with an optional error. */
class Queue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private head = 0;
  private waiters: { resolve: (r: IteratorResult<T>) => void; reject: (e: Error) => void }[] = [];
  private ended = false;
  private error: Error | undefined;

  constructor(private readonly max: number) {}

  /** Adds `item`; `false` when the queue is full (the item is not kept). */
  push(item: T): boolean {
    if (this.ended) return true;
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter.resolve({ value: item, done: false });
      return true;
    }
    if (this.items.length - this.head >= this.max) return false;
    this.items.push(item);
    return true;
  }

  end(error?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    for (const w of this.waiters.splice(0)) {
      if (error) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<T>> {
    if (this.head < this.items.length) {
      const value = this.items[this.head++];
      if (this.head > 1024 && this.head * 2 > this.items.length) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.ended) return this.error ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => this.next(),
      return: () => {
        this.end();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/** What a subscription and a registration share: a bounded queue to read or iterate. */
abstract class Feed<T> implements AsyncIterable<T> {
  /** @internal */
  readonly queue: Queue<T>;

  constructor(maxPending: number) {
    this.queue = new Queue(maxPending);
  }

  /** The next item, or `undefined` once it ended. */
  async next(): Promise<T | undefined> {
    const r = await this.queue.next();
    return r.done ? undefined : r.value;
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return this.queue[Symbol.asyncIterator]();
  }
}

/** A subscription: iterate it for its messages. */
export class Subscription extends Feed<Message> {
  /** Messages lost: dropped by the node (a `DROPPED` notice) or here (queue full). */
  dropped = 0;
  /** Called with each count of lost messages. */
  ondropped: ((count: number) => void) | undefined;

  /** @internal */
  constructor(
    private readonly client: Client,
    readonly sid: number,
    readonly pattern: string,
    readonly group: string | undefined,
    maxPending: number,
  ) {
    super(maxPending);
  }

  /** Ends the subscription; messages already queued are dropped. */
  unsubscribe(): void {
    this.client.unsubscribe(this);
  }

  /** @internal */
  lost(count: number): void {
    this.dropped += count;
    this.ondropped?.(count);
  }
}

/** One call to a procedure this client provides: answer with `respond` or `fail`. */
export class Request {
  private answered = false;
  /** Set when the caller gave up or the node cancelled the request. */
  readonly signal: AbortSignal;
  /** @internal */
  readonly abort: AbortController;

  /** @internal */
  constructor(
    private readonly client: Client,
    readonly reqId: number,
    readonly headers: Headers,
    readonly payload: Uint8Array,
    /** Time left before the caller's deadline when the node sent it, ms. */
    readonly timeoutMs: number,
  ) {
    this.abort = new AbortController();
    this.signal = this.abort.signal;
  }

  text(): string {
    return decoder.decode(this.payload);
  }

  json(): unknown {
    return JSON.parse(this.text());
  }

  /** Answers the call. Later answers are ignored. */
  respond(payload: Payload, opts: { headers?: Headers } = {}): void {
    if (this.answered) return;
    this.answered = true;
    this.client.answer(this.reqId, 0, opts.headers, toBytes(payload));
  }

  /** Fails the call with `message` (code 0x1000, or one of the provider's own above it). */
  fail(message: string, code: number = Code.ApplicationError): void {
    if (this.answered) return;
    this.answered = true;
    this.client.answer(this.reqId, Math.max(code, Code.ApplicationError), undefined, toBytes(message));
  }

  /** Reports progress to the caller (an MCP agent sees it as a progress notification). */
  notify(progress: { progress: number; total?: number; message?: string }): void {
    if (!this.answered) this.client.notice(this.reqId, 1, toBytes(JSON.stringify(progress)));
  }
}

/** A registration: iterate it for the requests to answer. */
export class Registration extends Feed<Request> {
  /** @internal */
  constructor(
    private readonly client: Client,
    readonly rid: number,
    readonly procedure: string,
    /** @internal */ readonly tool: Uint8Array | undefined,
    maxPending: number,
  ) {
    super(maxPending);
  }

  /** Withdraws the procedure. */
  unregister(): void {
    this.client.unregister(this);
  }
}

/** A tool's descriptor (docs/PROTOCOL.md §4.2): what AI agents see. */
export interface ToolDescriptor {
  description: string;
  inputSchema?: unknown;
  outputSchema?: unknown;
  title?: string;
  annotations?: unknown;
}

interface PendingAck {
  resolve: () => void;
  reject: (e: Error) => void;
}

interface PendingCall {
  resolve: (r: { payload: Uint8Array; headers: Headers }) => void;
  reject: (e: Error) => void;
  procedure: string;
  timer: ReturnType<typeof setTimeout>;
}

type State = "connecting" | "connected" | "reconnecting" | "closed";

/** A connection to a node. Create one with {@link connect}. */
export class Client {
  /** What the node said in its last `WELCOME`. */
  info: ServerInfo | undefined;
  private ws: WebSocket | undefined;
  private state: State = "connecting";
  private deframer = new Deframer();
  private out: Uint8Array[] = [];
  private outBytes = 0;
  private flushing = false;
  private buffered: Uint8Array[] = [];
  private bufferedBytes = 0;
  private nextId = 1;
  private subs = new Map<number, Subscription>();
  private regs = new Map<number, Registration>();
  private acks = new Map<number, PendingAck>();
  private calls = new Map<number, PendingCall>();
  private pings = new Map<number, () => void>();
  private serving = new Map<number, Request>();
  private lastGoAway: { code: number; message: string } | undefined;
  private welcomed: ((e?: Error) => void) | undefined;
  private reconnectDelay = 50;
  private readonly WS: WebSocketLike;

  /** @internal */
  constructor(
    readonly url: string,
    private readonly opts: ConnectOptions,
  ) {
    const ws = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketLike }).WebSocket;
    if (!ws) throw new ConnectError("no WebSocket here: use Node 22 or later, a browser, or pass options.WebSocket");
    this.WS = ws;
  }

  /** Opens a session; resolves after `WELCOME` (and the restore of what was live). @internal */
  async open(): Promise<void> {
    this.deframer = new Deframer();
    this.lastGoAway = undefined;
    const ws = new this.WS(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    const welcomed = new Promise<void>((resolve, reject) => {
      this.welcomed = (e) => (e ? reject(e) : resolve());
    });
    ws.onopen = () => {
      const token = this.opts.token === undefined ? new Uint8Array(0) : toBytes(this.opts.token);
      const hello = new Encoder()
        .varint(VERSION)
        .str(this.opts.realm ?? "default")
        .bytes(token)
        .str(this.opts.name ?? "fovea-ts")
        .frame(Kind.Hello);
      ws.send(hello);
    };
    ws.onmessage = (ev: MessageEvent) => {
      if (!(ev.data instanceof ArrayBuffer)) return this.fatal(ws, "the node sent a text message");
      try {
        this.deframer.push(new Uint8Array(ev.data));
        for (let f = this.deframer.next(); f; f = this.deframer.next()) this.handle(decodeFrame(f.kind, f.body));
      } catch (e) {
        this.fatal(ws, `the node sent a malformed frame: ${(e as Error).message}`);
      }
    };
    ws.onclose = (ev: CloseEvent) => this.onClose(ws, ev);
    ws.onerror = () => {};
    await welcomed;
  }

  private fatal(ws: WebSocket, why: string): void {
    this.lastGoAway = { code: Code.ProtocolError, message: why };
    ws.close();
  }

  private handle(f: Frame): void {
    switch (f.kind) {
      case Kind.Welcome: {
        this.info = { node: f.node, version: f.version, connectionId: f.connectionId, maxPayload: f.maxPayload };
        this.state = "connected";
        this.reconnectDelay = 50;
        this.restore();
        const w = this.welcomed;
        this.welcomed = undefined;
        w?.();
        return;
      }
      case Kind.Msg: {
        const sub = this.subs.get(f.sid);
        if (sub && !sub.queue.push(new Message(f.topic, f.headers, f.payload))) sub.lost(1);
        return;
      }
      case Kind.Dropped:
        this.subs.get(f.sid)?.lost(f.count);
        return;
      case Kind.SubAck:
      case Kind.RegAck: {
        const ack = this.acks.get(f.id);
        this.acks.delete(f.id);
        ack?.resolve();
        return;
      }
      case Kind.Error: {
        const ack = this.acks.get(f.reference);
        if (ack) {
          this.acks.delete(f.reference);
          // The node holds nothing under that id (but for DUPLICATE_ID, which we never cause).
          this.subs.get(f.reference)?.queue.end();
          this.subs.delete(f.reference);
          this.regs.get(f.reference)?.queue.end();
          this.regs.delete(f.reference);
          ack.reject(new RefusedError(f.message, f.code));
        }
        return;
      }
      case Kind.Result: {
        const call = this.calls.get(f.callId);
        if (!call) return;
        this.calls.delete(f.callId);
        clearTimeout(call.timer);
        if (f.code === 0) call.resolve({ payload: f.payload, headers: f.headers });
        else call.reject(resultError(f.code, decoder.decode(f.payload), call.procedure));
        return;
      }
      case Kind.Request: {
        const reg = this.regs.get(f.rid);
        const req = new Request(this, f.reqId, f.headers, f.payload, f.timeoutMs);
        if (!reg) return req.fail("no longer registered here");
        this.serving.set(f.reqId, req);
        if (!reg.queue.push(req)) {
          this.serving.delete(f.reqId);
          this.send(new Encoder().varint(f.reqId).varint(Code.Busy).headers(undefined).bytes(toBytes("provider queue full")).frame(Kind.Respond));
        }
        return;
      }
      case Kind.Cancel: {
        const req = this.serving.get(f.id);
        this.serving.delete(f.id);
        req?.abort.abort();
        return;
      }
      case Kind.Ping:
        this.send(new Encoder().varint(f.token).frame(Kind.Pong));
        return;
      case Kind.Pong: {
        const done = this.pings.get(f.token);
        this.pings.delete(f.token);
        done?.();
        return;
      }
      case Kind.GoAway:
        this.lastGoAway = { code: f.code, message: f.message };
        return;
      default:
        return;
    }
  }

  private onClose(ws: WebSocket, ev: CloseEvent): void {
    if (ws !== this.ws) return;
    this.ws = undefined;
    const goaway = this.lastGoAway;
    const reason = goaway
      ? `closed by the node: ${goaway.message || "no reason"} (code 0x${goaway.code.toString(16)})`
      : `connection lost (WebSocket ${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`;
    // Whatever was in flight on this session ends here (whether a call ran is unknown).
    for (const [id, call] of this.calls) {
      clearTimeout(call.timer);
      call.reject(new DisconnectedError(`${call.procedure}: ${reason}`));
      this.calls.delete(id);
    }
    for (const req of this.serving.values()) req.abort.abort();
    this.serving.clear();
    for (const done of this.pings.values()) done();
    this.pings.clear();
    this.out = [];
    this.outBytes = 0;
    if (this.welcomed) {
      // The handshake failed: the first connect reports it.
      const w = this.welcomed;
      this.welcomed = undefined;
      const code = goaway?.code;
      w(
        code === Code.AuthFailed
          ? new AuthError("authentication failed: check the realm and token", code)
          : code !== undefined && code !== Code.NoError
            ? new ClosedError(reason, code)
            : new ConnectError(`cannot open a session at ${this.url}: ${reason}`),
      );
    }
    if (this.state === "closed") return;
    if (goaway?.code === Code.SlowConsumer) this.lostOnClose(goaway.message);
    if (this.opts.reconnect === false || this.state === "connecting") {
      if (this.state !== "connecting") this.shutdown(new DisconnectedError(reason));
      return;
    }
    // Subscriptions and registrations waiting for their ack stay: the restore after
    // reconnecting sends them again, and their ack comes then.
    this.state = "reconnecting";
    this.scheduleReconnect();
  }

  /** A `SLOW_CONSUMER` close's reason says what each subscription lost (PROTOCOL.md §4). */
  private lostOnClose(reason: string): void {
    const at = reason.lastIndexOf("; dropped ");
    if (at < 0) return;
    for (const pair of reason.slice(at + 10).split(" ")) {
      const [sid, total] = pair.split("=").map(Number);
      const sub = this.subs.get(sid);
      if (sub && Number.isFinite(total) && total > sub.dropped) sub.lost(total - sub.dropped);
    }
  }

  private scheduleReconnect(): void {
    const delay = this.reconnectDelay * (0.75 + Math.random() / 2);
    this.reconnectDelay = Math.min(this.reconnectDelay * 2, this.opts.maxReconnectDelay ?? 2000);
    setTimeout(() => {
      if (this.state !== "reconnecting") return;
      // A failed attempt ends in `onClose`, which schedules the next one.
      this.open().catch(() => {});
    }, delay);
  }

  /** After `WELCOME`: SUB and REG for everything live, then what waited. */
  private restore(): void {
    for (const s of this.subs.values()) this.send(subFrame(s.sid, s.pattern, s.group));
    for (const r of this.regs.values()) this.send(regFrame(r.rid, r.procedure, r.tool));
    const waiting = this.buffered;
    this.buffered = [];
    this.bufferedBytes = 0;
    for (const f of waiting) this.send(f);
  }

  /** Queues a frame; frames of one turn of the event loop go in one WebSocket message. */
  private send(frame: Uint8Array): void {
    if (this.state !== "connected" || !this.ws) return;
    this.out.push(frame);
    this.outBytes += frame.length;
    if (this.outBytes >= WS_MESSAGE) return this.flushOut();
    if (!this.flushing) {
      this.flushing = true;
      queueMicrotask(() => this.flushOut());
    }
  }

  private flushOut(): void {
    this.flushing = false;
    if (!this.ws || this.out.length === 0) return;
    const parts = this.out;
    this.out = [];
    const total = this.outBytes;
    this.outBytes = 0;
    if (parts.length === 1 && total <= WS_MESSAGE) return this.ws.send(parts[0]);
    const joined = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      joined.set(p, at);
      at += p.length;
    }
    // Messages are a byte stream (PROTOCOL.md §1.2): cut at WS_MESSAGE, under the node's limit.
    for (let i = 0; i < total; i += WS_MESSAGE) this.ws.send(joined.subarray(i, Math.min(total, i + WS_MESSAGE)));
  }

  private check(): void {
    if (this.state === "closed") throw new DisconnectedError("the client is closed");
  }

  /** Waits while the socket holds more than 8 MiB unsent: a fast publisher slows to the network. */
  private async backpressure(): Promise<void> {
    while (this.ws && this.ws.bufferedAmount > 8 << 20) await new Promise((r) => setTimeout(r, 1));
  }

  /** Publishes `payload` to `topic`. While reconnecting it is kept (up to `maxBuffered`). */
  async publish(topic: string, payload: Payload, opts: { headers?: Headers } = {}): Promise<void> {
    this.check();
    const body = toBytes(payload);
    if (this.info && body.length > this.info.maxPayload) {
      throw new RefusedError(`payload of ${body.length} bytes exceeds the node's max_payload of ${this.info.maxPayload}`, Code.PayloadTooLarge);
    }
    const frame = new Encoder().str(topic).headers(opts.headers).bytes(body).frame(Kind.Pub);
    if (this.state === "connected") {
      this.send(frame);
      await this.backpressure();
      return;
    }
    if (this.bufferedBytes + frame.length > (this.opts.maxBuffered ?? 8 << 20)) {
      throw new DisconnectedError(`disconnected and the publish buffer is full (${this.bufferedBytes} bytes)`);
    }
    this.buffered.push(frame);
    this.bufferedBytes += frame.length;
  }

  /** Subscribes to `pattern` (`*` one segment, `>` the rest); `group` makes it a queue group member. */
  async subscribe(pattern: string, opts: { group?: string } = {}): Promise<Subscription> {
    this.check();
    const sid = this.nextId++;
    const sub = new Subscription(this, sid, pattern, opts.group, this.opts.maxPending ?? 65536);
    this.subs.set(sid, sub);
    await this.acked(sid, subFrame(sid, pattern, opts.group));
    return sub;
  }

  /** Offers `procedure`; with `tool`, AI agents see it as a tool. */
  async register(procedure: string, opts: { tool?: ToolDescriptor } = {}): Promise<Registration> {
    this.check();
    const rid = this.nextId++;
    const tool = opts.tool ? toBytes(JSON.stringify(opts.tool)) : undefined;
    const reg = new Registration(this, rid, procedure, tool, this.opts.maxPending ?? 65536);
    this.regs.set(rid, reg);
    await this.acked(rid, regFrame(rid, procedure, tool));
    return reg;
  }

  private acked(id: number, frame: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      this.acks.set(id, { resolve, reject });
      // Sent now if connected; otherwise the restore after reconnecting sends it.
      this.send(frame);
    });
  }

  /** Calls `procedure`; resolves with the answer's payload. */
  async call(procedure: string, payload: Payload, opts: { timeout?: number; headers?: Headers } = {}): Promise<Uint8Array> {
    return (await this.request(procedure, payload, opts)).payload;
  }

  /** As {@link Client.call}, with the answer's headers. */
  request(
    procedure: string,
    payload: Payload,
    opts: { timeout?: number; headers?: Headers } = {},
  ): Promise<{ payload: Uint8Array; headers: Headers }> {
    this.check();
    if (this.state !== "connected") return Promise.reject(new DisconnectedError("not connected to the node (reconnecting)"));
    const timeout = opts.timeout ?? 10_000;
    const callId = this.nextId++;
    return new Promise((resolve, reject) => {
      // The node answers TIMEOUT at the deadline; this is the backstop if it cannot.
      const timer = setTimeout(() => {
        if (!this.calls.delete(callId)) return;
        this.send(new Encoder().varint(callId).frame(Kind.Cancel));
        reject(new TimeoutError(`the call to ${procedure} timed out after ${timeout} ms`, Code.Timeout));
      }, timeout + 1000);
      this.calls.set(callId, { resolve, reject, procedure, timer });
      this.send(
        new Encoder()
          .varint(callId)
          .str(procedure)
          .varint(Math.max(1, Math.round(timeout)))
          .headers(opts.headers)
          .bytes(toBytes(payload))
          .frame(Kind.Call),
      );
    });
  }

  /** Resolves once the node has handled everything sent before (a `PING` round trip). */
  flush(): Promise<void> {
    this.check();
    const token = this.nextId++;
    return new Promise((resolve) => {
      this.pings.set(token, resolve);
      this.send(new Encoder().varint(token).frame(Kind.Ping));
    });
  }

  /** @internal */
  unsubscribe(sub: Subscription): void {
    if (!this.subs.delete(sub.sid)) return;
    sub.queue.end();
    this.send(new Encoder().varint(sub.sid).frame(Kind.Unsub));
  }

  /** @internal */
  unregister(reg: Registration): void {
    if (!this.regs.delete(reg.rid)) return;
    reg.queue.end();
    this.send(new Encoder().varint(reg.rid).frame(Kind.Unreg));
  }

  /** @internal */
  answer(reqId: number, code: number, headers: Headers | undefined, payload: Uint8Array): void {
    if (!this.serving.delete(reqId)) return;
    this.send(new Encoder().varint(reqId).varint(code).headers(headers).bytes(payload).frame(Kind.Respond));
  }

  /** @internal */
  notice(reqId: number, kind: number, body: Uint8Array): void {
    if (this.serving.has(reqId)) this.send(new Encoder().varint(reqId).varint(kind).bytes(body).frame(Kind.Notice));
  }

  private shutdown(error?: FoveaError): void {
    this.state = "closed";
    for (const s of this.subs.values()) s.queue.end(error);
    for (const r of this.regs.values()) r.queue.end(error);
    this.subs.clear();
    this.regs.clear();
    const gone = error ?? new DisconnectedError("the client is closed");
    for (const ack of this.acks.values()) ack.reject(gone);
    this.acks.clear();
    for (const call of this.calls.values()) {
      clearTimeout(call.timer);
      call.reject(gone);
    }
    this.calls.clear();
  }

  /** Sends what is queued, closes the connection and ends every subscription and registration. */
  async close(): Promise<void> {
    if (this.state === "closed") return;
    const ws = this.ws;
    if (ws && this.state === "connected") {
      this.flushOut();
      await this.backpressure();
    }
    this.shutdown();
    if (ws) {
      const closed = new Promise<void>((resolve) => ws.addEventListener("close", () => resolve()));
      ws.close(1000);
      await Promise.race([closed, new Promise((r) => setTimeout(r, 1000))]);
    }
  }
}

function subFrame(sid: number, pattern: string, group: string | undefined): Uint8Array {
  const e = new Encoder().varint(sid).str(pattern);
  if (group) e.str(group);
  return e.frame(Kind.Sub);
}

function regFrame(rid: number, procedure: string, tool: Uint8Array | undefined): Uint8Array {
  const e = new Encoder().varint(rid).str(procedure);
  if (tool) e.bytes(tool);
  return e.frame(Kind.Reg);
}

/**
 * Connects to the node at `url` (`ws://HOST:PORT` or `wss://HOST:PORT`; start the node with
 * `--ws`) and opens a session. The first failure is thrown as is (no node, bad
 * credential); later disconnections are handled by reconnecting.
 */
export async function connect(url: string, opts: ConnectOptions = {}): Promise<Client> {
  if (!/^wss?:\/\//.test(url)) {
    throw new ConnectError(`${url}: the TypeScript SDK speaks WebSocket: use ws://HOST:PORT or wss://HOST:PORT (start the node with --ws ADDR)`);
  }
  const client = new Client(url, opts);
  const timeout = opts.connectTimeout ?? 10_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      client.open(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new ConnectError(`no node answered at ${url} within ${timeout} ms: is one running with --ws?`)), timeout);
      }),
    ]);
  } catch (e) {
    await client.close();
    throw e instanceof FoveaError ? e : new ConnectError(`${url}: ${(e as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
  return client;
}
