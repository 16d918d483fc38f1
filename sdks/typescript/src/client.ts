// The client: one WebSocket to a node (docs/PROTOCOL.md §1.2), the session on it, and
// reconnection that restores subscriptions and registrations, as the Rust SDK does.

import {
  CallFlags,
  DataFlags,
  Deframer,
  Encoder,
  INITIAL_CREDIT,
  Kind,
  NoticeKind,
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
  INPUT_REQUIRED,
  InputRequiredError,
  NotAnsweredError,
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
  /**
   * Largest streamed message (protocol 6) a subscription takes, assembled whole (default
   * 64 MiB); a larger one is refused and counted as lost.
   */
  maxMessage?: number;
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

  isEmpty(): boolean {
    return this.head >= this.items.length;
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

/** A streamed message being assembled for its subscription. */
interface Incoming {
  sid: number;
  topic: string;
  headers: Headers;
  parts: Uint8Array[];
  size: number;
}

/**
 * A message published in parts ({@link Client.publishStream}): `send` waits for the
 * node's credit (the slowest subscriber's pace); `finish` ends it, `cut` abandons it.
 */
export class PublishStream {
  /** @internal */
  readonly credit = new SendCredit(0);

  /** @internal */
  constructor(
    private readonly client: Client,
    readonly id: number,
  ) {}

  /** Sends the next part, in chunks within the credit. Throws if the node refused or stopped the message. */
  async send(part: Payload): Promise<void> {
    await this.client.sendChunks(this.id, DataFlags.Message, toBytes(part), this.credit);
  }

  /** Ends the message: its subscribers have all of it. */
  finish(): void {
    this.credit.close(new FoveaError("the message has ended", Code.NoError));
    this.client.endPublish(this, DataFlags.End);
  }

  /** Abandons the message: its subscribers learn it is incomplete. */
  cut(): void {
    this.credit.close(new FoveaError("the message was cut", Code.NoError));
    this.client.endPublish(this, DataFlags.Cut);
  }
}

/** Bytes of a stream this SDK lets its sender have in flight (its receive window). */
const WINDOW = 4 << 20;
/** Credit is granted back in steps of this many bytes read. */
const STEP = 1 << 20;
/** Largest chunk this SDK sends (less when the node's `max_payload` is smaller). */
const MAX_CHUNK = 256 * 1024;

/** The credit to send one direction of a streamed call (docs/PROTOCOL.md §4.4). */
class SendCredit {
  private waiters: (() => void)[] = [];
  private closed: Error | undefined;

  constructor(private credit: number) {}

  grant(bytes: number): void {
    this.credit += bytes;
    for (const w of this.waiters.splice(0)) w();
  }

  close(why: Error): void {
    this.closed ??= why;
    for (const w of this.waiters.splice(0)) w();
  }

  /** Takes up to `want` bytes of credit, waiting for some. */
  async take(want: number): Promise<number> {
    while (!this.closed && this.credit === 0) await new Promise<void>((r) => this.waiters.push(r));
    if (this.closed) throw this.closed;
    const n = Math.min(want, this.credit);
    this.credit -= n;
    return n;
  }
}

/** The receiving side's accounting: credit to grant back as the application reads. */
class ReadWindow {
  private unacked = 0;
  private opened = false;

  constructor(private readonly initial: number) {}

  /** Credit to grant now (0: none) after reading `read` bytes; the first call opens the window. */
  grant(read: number): number {
    this.unacked += read;
    if (!this.opened) {
      this.opened = true;
      const g = Math.max(0, WINDOW - this.initial) + this.unacked;
      this.unacked = 0;
      return g;
    }
    if (this.unacked < STEP) return 0;
    const g = this.unacked;
    this.unacked = 0;
    return g;
  }
}

/**
 * The chunks of one direction of a streamed call, as they arrive: iterate it (or call
 * `next`); credit goes back to the sender as they are read, so a slow reader slows it down.
 */
export class ChunkStream implements AsyncIterable<Uint8Array> {
  /** @internal */
  readonly queue = new Queue<Uint8Array>(Infinity);
  private readonly window: ReadWindow;

  /** @internal */
  constructor(
    initial: number,
    private readonly grant: (bytes: number) => void,
  ) {
    this.window = new ReadWindow(initial);
  }

  /** The next chunk, or `undefined` at the end. */
  async next(): Promise<Uint8Array | undefined> {
    // A stream that starts without credit is opened by its first read.
    if (this.queue.isEmpty()) this.give(0);
    const r = await this.queue.next();
    if (r.done) return undefined;
    this.give(r.value.length);
    return r.value;
  }

  /** Every chunk, joined; throws past `max` bytes. */
  async collect(max = 64 << 20): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    let size = 0;
    for (let c = await this.next(); c; c = await this.next()) {
      size += c.length;
      if (size > max) throw new RefusedError(`the stream is over ${max} bytes`, Code.PayloadTooLarge);
      parts.push(c);
    }
    const out = new Uint8Array(size);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  private give(read: number): void {
    const g = this.window.grant(read);
    if (g > 0) this.grant(g);
  }

  /** Called when an iteration stops early (`break`): a call is cancelled. @internal */
  protected stopped(): void {}

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return {
      next: async () => {
        const value = await this.next();
        return value === undefined ? { value: undefined, done: true } : { value, done: false };
      },
      return: async () => {
        this.stopped();
        return { value: undefined, done: true };
      },
    };
  }
}

/**
 * A call whose answer streams ({@link Client.callStream}) and, opened with
 * {@link Client.openCall}, whose request streams too: `send` and `finish` the request,
 * iterate the answer. The final answer's payload comes as the last chunk (when not empty);
 * a failed call throws from the iteration. `headers` holds the answer's headers at the end.
 */
export class CallStream extends ChunkStream {
  headers: Headers = {};
  /** @internal */
  readonly credit = new SendCredit(0);
  private finished = false;

  /** @internal */
  constructor(
    private readonly client: Client,
    readonly callId: number,
    readonly procedure: string,
    private readonly streamsRequest: boolean,
  ) {
    super(INITIAL_CREDIT, (bytes) => client.grant(callId, DataFlags.Answer, bytes));
  }

  /** Sends `data` as the next part of the request, as the provider makes room for it. */
  async send(data: Payload): Promise<void> {
    if (!this.streamsRequest || this.finished) throw new RefusedError("this call's request does not stream, or was finished", Code.FlowControlError);
    await this.client.sendChunks(this.callId, 0, toBytes(data), this.credit);
  }

  /** Ends the request. */
  finish(): void {
    if (!this.streamsRequest || this.finished) return;
    this.finished = true;
    this.client.sendData(this.callId, DataFlags.End, new Uint8Array(0));
  }

  /** Abandons the call: the provider is told. */
  cancel(): void {
    this.client.cancelStream(this);
  }

  protected override stopped(): void {
    this.cancel();
  }

  /** @internal */
  end(code: number, headers: Headers, payload: Uint8Array): void {
    this.credit.close(new RefusedError("the call has ended", Code.FlowControlError));
    if (code === 0) {
      this.headers = headers;
      if (payload.length > 0) this.queue.push(payload);
      this.queue.end();
    } else {
      this.queue.end(resultError(code, decoder.decode(payload), this.procedure));
    }
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
  readonly answerCredit: SendCredit;
  /**
   * The rest of a streamed request (after `payload`), when the caller streams it
   * (`requestStreams`): iterate it; the caller sends no faster than it is read.
   */
  readonly body: ChunkStream | undefined;

  /** @internal */
  constructor(
    private readonly client: Client,
    readonly reqId: number,
    readonly headers: Headers,
    readonly payload: Uint8Array,
    /** Time left before the caller's deadline when the node sent it, ms. */
    readonly timeoutMs: number,
    /** The call's flags (docs/PROTOCOL.md §4.4). */
    readonly flags = 0,
  ) {
    this.abort = new AbortController();
    this.signal = this.abort.signal;
    this.answerCredit = new SendCredit(this.answerStreams ? INITIAL_CREDIT : 0);
    this.body = this.requestStreams ? new ChunkStream(0, (bytes) => client.grant(reqId, 0, bytes)) : undefined;
  }

  /** Whether the caller streams its request (read it from `body`). */
  get requestStreams(): boolean {
    return (this.flags & CallFlags.StreamRequest) !== 0;
  }

  /** Whether the caller takes its answer as a stream (`send` chunks before `respond`). */
  get answerStreams(): boolean {
    return (this.flags & CallFlags.StreamAnswer) !== 0;
  }

  /** Sends `data` as the next part of a streamed answer, as the caller makes room for it. */
  async send(data: Payload): Promise<void> {
    if (!this.answerStreams || this.answered) throw new RefusedError("the caller takes one answer", Code.FlowControlError);
    await this.client.sendChunks(this.reqId, DataFlags.Answer, toBytes(data), this.answerCredit);
  }

  /**
   * The MCP method this request serves for a resource, template or prompt
   * (`resources/read`, `prompts/get`, `completion/complete`); undefined for a tool call
   * or a plain call. The payload is then the method's params (JSON).
   */
  get mcpMethod(): string | undefined {
    return this.headers["mcp-method"];
  }

  text(): string {
    return decoder.decode(this.payload);
  }

  json(): unknown {
    return JSON.parse(this.text());
  }

  /**
   * Answers the call. Later answers are ignored. An answer over the node's `max_payload`
   * is streamed to a caller that takes streamed answers; others get an error saying so.
   */
  respond(payload: Payload, opts: { headers?: Headers } = {}): void {
    if (this.answered) return;
    const body = toBytes(payload);
    const max = this.client.info?.maxPayload ?? Infinity;
    if (body.length > max) {
      if (!this.answerStreams) {
        return this.fail(`the answer is ${body.length} bytes, over the node's max_payload of ${max}, and the caller takes one answer: call with callStream to receive it`);
      }
      this.send(body).then(
        () => this.respond(new Uint8Array(0), opts),
        () => (this.answered = true),
      );
      return;
    }
    this.answered = true;
    this.client.answer(this.reqId, 0, opts.headers, body);
  }

  /** Fails the call with `message` (code 0x1000, or one of the provider's own above it). */
  fail(message: string, code: number = Code.ApplicationError): void {
    if (this.answered) return;
    this.answered = true;
    this.client.answer(this.reqId, Math.max(code, Code.ApplicationError), undefined, toBytes(message));
  }

  /**
   * Asks the caller's agent a question while handling this call (docs/PROTOCOL.md §4.7):
   * `elicitation/create`, `sampling/createMessage` or `roots/list` with its MCP params.
   * Resolves with the MCP result; rejects with `NotAnsweredError` when the caller declines
   * or the call ends first, and with `InputRequiredError` when an MCP 2026-07-28 agent is
   * asked through an input-required result (end the run: the agent's retry runs the handler
   * again). `key` (1 to 64 bytes) names the question the same way on every run, so the
   * retry's answer finds it; without one, questions go by their order in the run.
   */
  ask(method: string, params: unknown = {}, key?: string): Promise<unknown> {
    if (key !== undefined && (key.length === 0 || toBytes(key).length > 64)) {
      return Promise.reject(new RangeError(`a question key is 1 to 64 bytes, not ${JSON.stringify(key)}`));
    }
    return this.client.ask(this.reqId, method, params, this.signal, key);
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

/**
 * A resource's descriptor (docs/PROTOCOL.md §4.6): `uri`, or an RFC 6570 `uriTemplate`
 * for every URI it matches.
 */
export interface ResourceDescriptor {
  uri?: string;
  uriTemplate?: string;
  name?: string;
  title?: string;
  description?: string;
  mimeType?: string;
  size?: number;
  annotations?: unknown;
}

/** A prompt's descriptor (docs/PROTOCOL.md §4.6). */
export interface PromptDescriptor {
  description: string;
  title?: string;
  arguments?: { name: string; title?: string; description?: string; required?: boolean }[];
}

/** The content type of an answer that is a whole MCP result (docs/PROTOCOL.md §4.6). */
export const MCP_RESULT_TYPE = "application/mcp-result+json";

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
  /** Questions our providers asked, by `${reqId}:${questionId}` (docs/PROTOCOL.md §4.7). */
  private questions = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private streams = new Map<number, CallStream>();
  /** Streamed messages this client publishes, by its id (docs/PROTOCOL.md §4.5). */
  private publishing = new Map<number, PublishStream>();
  /** Streamed messages arriving, by the node's id: assembled whole for their subscription. */
  private incoming = new Map<number, Incoming>();
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
      case Kind.Notice: {
        let body: { id?: number; result?: unknown; error?: { code?: number; message?: string } };
        try {
          body = JSON.parse(decoder.decode(f.body));
        } catch {
          return;
        }
        if (f.noticeKind === NoticeKind.Reply) {
          const key = `${f.id}:${body.id}`;
          const q = this.questions.get(key);
          this.questions.delete(key);
          if (body.error) {
            const code = body.error.code ?? -32603;
            const message = body.error.message ?? "declined";
            q?.reject(code === INPUT_REQUIRED ? new InputRequiredError(message, code) : new NotAnsweredError(message, code));
          }
          else q?.resolve(body.result);
        } else if (f.noticeKind === NoticeKind.Question) {
          // This SDK has no agent to ask: decline at once rather than leave the provider waiting.
          const reply = { id: body.id, error: { code: -32601, message: "this caller cannot answer questions (it has no agent to ask)" } };
          this.send(new Encoder().varint(f.id).varint(NoticeKind.Reply).bytes(toBytes(JSON.stringify(reply))).frame(Kind.Notice));
        }
        break;
      }
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
      case Kind.MsgStream: {
        if (!this.subs.has(f.sid)) return this.grant(f.id, DataFlags.Message | DataFlags.Cut, 0);
        this.incoming.set(f.id, { sid: f.sid, topic: f.topic, headers: f.headers, parts: [f.payload], size: f.payload.length });
        // Taken as it comes: a window as wide as a streamed call's keeps the path busy.
        this.grant(f.id, DataFlags.Message, WINDOW - INITIAL_CREDIT);
        return;
      }
      case Kind.SubAck:
      case Kind.RegAck: {
        const ack = this.acks.get(f.id);
        this.acks.delete(f.id);
        ack?.resolve();
        return;
      }
      case Kind.Error: {
        const published = this.publishing.get(f.reference);
        if (published) {
          this.publishing.delete(f.reference);
          published.credit.close(new RefusedError(f.message, f.code));
          return;
        }
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
        const stream = this.streams.get(f.callId);
        if (stream) {
          this.streams.delete(f.callId);
          return stream.end(f.code, f.headers, f.payload);
        }
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
        const req = new Request(this, f.reqId, f.headers, f.payload, f.timeoutMs, f.flags);
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
        const gone = new RefusedError("the call was abandoned", Code.FlowControlError);
        req?.answerCredit.close(gone);
        req?.body?.queue.end(gone);
        return;
      }
      // An answer's chunk is for one of our calls; a request's for a request we serve.
      case Kind.Data: {
        if (f.flags & DataFlags.Message) return this.messageData(f.id, f.flags, f.chunk);
        if (f.flags & DataFlags.Answer) {
          this.streams.get(f.id)?.queue.push(f.chunk);
          return;
        }
        const body = this.serving.get(f.id)?.body;
        if (f.chunk.length > 0) body?.queue.push(f.chunk);
        if (f.flags & DataFlags.End) body?.queue.end();
        return;
      }
      // Credit for our answer comes from a caller; for our request, from its provider.
      case Kind.Credit:
        if (f.flags & DataFlags.Message) {
          const p = this.publishing.get(f.id);
          if (f.flags & DataFlags.Cut) {
            this.publishing.delete(f.id);
            p?.credit.close(new RefusedError("the node stopped the message", Code.FlowControlError));
          } else p?.credit.grant(f.bytes);
          return;
        }
        if (f.flags & DataFlags.Answer) this.serving.get(f.id)?.answerCredit.grant(f.bytes);
        else this.streams.get(f.id)?.credit.grant(f.bytes);
        return;
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

  /** A chunk of a streamed message to one of our subscriptions. */
  private messageData(id: number, flags: number, chunk: Uint8Array): void {
    const m = this.incoming.get(id);
    if (!m) return;
    const sub = this.subs.get(m.sid);
    const max = this.opts.maxMessage ?? 64 << 20;
    if (!sub || flags & DataFlags.Cut || m.size + chunk.length > max) {
      this.incoming.delete(id);
      if (!(flags & DataFlags.Cut)) this.grant(id, DataFlags.Message | DataFlags.Cut, 0);
      sub?.lost(1);
      return;
    }
    if (chunk.length > 0) m.parts.push(chunk);
    m.size += chunk.length;
    if (!(flags & DataFlags.End)) {
      if (chunk.length > 0) this.grant(id, DataFlags.Message, chunk.length);
      return;
    }
    this.incoming.delete(id);
    const payload = new Uint8Array(m.size);
    let at = 0;
    for (const p of m.parts) {
      payload.set(p, at);
      at += p.length;
    }
    if (!sub.queue.push(new Message(m.topic, m.headers, payload))) sub.lost(1);
  }

  private onClose(ws: WebSocket, ev: CloseEvent): void {
    if (ws !== this.ws) return;
    this.ws = undefined;
    const goaway = this.lastGoAway;
    const reason = goaway
      ? `closed by the node: ${goaway.message || "no reason"} (code 0x${goaway.code.toString(16)})`
      : `connection lost (WebSocket ${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`;
    // Whatever was in flight on this session ends here (whether a call ran is unknown).
    for (const [id, stream] of this.streams) {
      stream.credit.close(new DisconnectedError(reason));
      stream.queue.end(new DisconnectedError(`${stream.procedure}: ${reason}`));
      this.streams.delete(id);
    }
    for (const p of this.publishing.values()) p.credit.close(new DisconnectedError(reason));
    this.publishing.clear();
    this.incoming.clear();
    for (const req of this.serving.values()) {
      req.answerCredit.close(new DisconnectedError(reason));
      req.body?.queue.end(new DisconnectedError(reason));
    }
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
      if (this.info.version < 6) {
        throw new RefusedError(`payload of ${body.length} bytes exceeds the node's max_payload of ${this.info.maxPayload}`, Code.PayloadTooLarge);
      }
      const stream = this.publishStream(topic, opts);
      await stream.send(body);
      return stream.finish();
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

  /**
   * Opens a message to `topic` whose payload follows in parts (protocol 6): `send` each
   * (it waits while the slowest subscriber catches up), then `finish`; `cut` abandons it.
   */
  publishStream(topic: string, opts: { headers?: Headers; first?: Payload } = {}): PublishStream {
    this.check();
    if (this.state !== "connected") throw new DisconnectedError("not connected to the node (reconnecting)");
    if (this.info && this.info.version < 6) throw new RefusedError(`the node speaks protocol version ${this.info.version}; streamed messages need 6`, Code.StreamsUnsupported);
    const id = this.nextId++;
    const stream = new PublishStream(this, id);
    this.publishing.set(id, stream);
    const first = opts.first === undefined ? new Uint8Array(0) : toBytes(opts.first);
    this.send(new Encoder().varint(id).str(topic).headers(opts.headers).bytes(first).frame(Kind.PubStream));
    return stream;
  }

  /** @internal A published stream ended here (finished or cut). */
  endPublish(stream: PublishStream, flags: number): void {
    if (!this.publishing.delete(stream.id)) return;
    this.sendData(stream.id, DataFlags.Message | flags, new Uint8Array(0));
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
    return this.registerDescribed(procedure, opts.tool);
  }

  /**
   * Offers `procedure` as an MCP resource (or template, with `uriTemplate`) for agents on
   * any node: each read is a request whose `mcpMethod` is `resources/read`, with the
   * params `{uri, variables}` as JSON payload. Answer with the content, or
   * `fail(message, Code.NotFound)`.
   */
  async registerResource(procedure: string, resource: ResourceDescriptor): Promise<Registration> {
    return this.registerDescribed(procedure, { ...resource, kind: resource.uriTemplate ? "resourceTemplate" : "resource" });
  }

  /**
   * Offers `procedure` as an MCP prompt (named like a tool): each `prompts/get` is a
   * request with `{name, arguments}`; answer with its text. `completion/complete` requests
   * are answered with a JSON array of strings.
   */
  async registerPrompt(procedure: string, prompt: PromptDescriptor): Promise<Registration> {
    return this.registerDescribed(procedure, { ...prompt, kind: "prompt" });
  }

  /** Tells the agents watching resource `uri` (served by `procedure`), on any node, that it changed. */
  async resourceUpdated(procedure: string, uri: string): Promise<void> {
    await this.publish(`$mcp.updated.${procedure}`, uri);
  }

  private async registerDescribed(procedure: string, descriptor: object | undefined): Promise<Registration> {
    this.check();
    const rid = this.nextId++;
    const tool = descriptor ? toBytes(JSON.stringify(descriptor)) : undefined;
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
      this.send(callFrame(callId, procedure, timeout, opts.headers, toBytes(payload), 0));
    });
  }

  /**
   * Calls `procedure` and receives its answer as a stream of chunks (iterate the result).
   * `payload` may be larger than the node's `max_payload`: it is then streamed first.
   */
  async callStream(procedure: string, payload: Payload, opts: { timeout?: number; headers?: Headers } = {}): Promise<CallStream> {
    const body = toBytes(payload);
    const large = this.info !== undefined && body.length > this.info.maxPayload;
    const flags = CallFlags.StreamAnswer | (large ? CallFlags.StreamRequest : 0);
    const stream = this.startStream(procedure, large ? new Uint8Array(0) : body, flags, opts);
    if (large) {
      await stream.send(body);
      stream.finish();
    }
    return stream;
  }

  /** Opens a call whose request and answer both stream: `send`, `finish`, then iterate. */
  openCall(procedure: string, opts: { timeout?: number; headers?: Headers } = {}): CallStream {
    return this.startStream(procedure, new Uint8Array(0), CallFlags.StreamAnswer | CallFlags.StreamRequest, opts);
  }

  private startStream(
    procedure: string,
    payload: Uint8Array,
    flags: number,
    opts: { timeout?: number; headers?: Headers },
  ): CallStream {
    this.check();
    if (this.state !== "connected") throw new DisconnectedError("not connected to the node (reconnecting)");
    if (this.info && this.info.version < 5) throw new RefusedError(`the node speaks protocol version ${this.info.version}; streamed calls need 5`, Code.StreamsUnsupported);
    const callId = this.nextId++;
    const stream = new CallStream(this, callId, procedure, (flags & CallFlags.StreamRequest) !== 0);
    this.streams.set(callId, stream);
    this.send(callFrame(callId, procedure, opts.timeout ?? 10_000, opts.headers, payload, flags));
    return stream;
  }

  /** @internal */
  cancelStream(stream: CallStream): void {
    if (!this.streams.delete(stream.callId)) return;
    this.send(new Encoder().varint(stream.callId).frame(Kind.Cancel));
    const gone = new FoveaError("the call was cancelled by its caller", Code.NoError);
    stream.credit.close(gone);
    stream.queue.end(gone);
  }

  /** @internal */
  grant(id: number, flags: number, bytes: number): void {
    this.send(new Encoder().varint(id).varint(flags).varint(bytes).frame(Kind.Credit));
  }

  /** @internal */
  sendData(id: number, flags: number, chunk: Uint8Array): void {
    this.send(new Encoder().varint(id).varint(flags).bytes(chunk).frame(Kind.Data));
  }

  /** @internal Sends `data` in chunks within `credit`, waiting for more as needed. */
  async sendChunks(id: number, flags: number, data: Uint8Array, credit: SendCredit): Promise<void> {
    const max = Math.min(MAX_CHUNK, this.info?.maxPayload ?? MAX_CHUNK);
    for (let at = 0; at < data.length; ) {
      const n = await credit.take(Math.min(max, data.length - at));
      this.sendData(id, flags, data.subarray(at, at + n));
      at += n;
      await this.backpressure();
    }
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
  ask(reqId: number, method: string, params: unknown, signal: AbortSignal, questionKey?: string): Promise<unknown> {
    if (!this.serving.has(reqId)) return Promise.reject(new RefusedError("the request was already answered", Code.ApplicationError));
    const id = this.nextId++;
    const key = `${reqId}:${id}`;
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.questions.delete(key);
        reject(new NotAnsweredError("the call ended before the agent answered", -32603));
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.questions.set(key, {
        resolve: (v) => (signal.removeEventListener("abort", onAbort), resolve(v)),
        reject: (e) => (signal.removeEventListener("abort", onAbort), reject(e)),
      });
      const question = questionKey === undefined ? { id, method, params } : { id, key: questionKey, method, params };
      this.notice(reqId, NoticeKind.Question, toBytes(JSON.stringify(question)));
    });
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
    for (const stream of this.streams.values()) {
      stream.credit.close(gone);
      stream.queue.end(gone);
    }
    this.streams.clear();
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

/** A `CALL`; its `flags` (v5) are written only when not 0, as a v4 `CALL` has none. */
function callFrame(
  callId: number,
  procedure: string,
  timeout: number,
  headers: Headers | undefined,
  payload: Uint8Array,
  flags: number,
): Uint8Array {
  const e = new Encoder().varint(callId).str(procedure).varint(Math.max(1, Math.round(timeout))).headers(headers).bytes(payload);
  if (flags !== 0) e.varint(flags);
  return e.frame(Kind.Call);
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
