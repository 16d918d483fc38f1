// Typed errors. Codes are docs/PROTOCOL.md §5's; each class says what happened and, where
// there is one, what to do.

/** Error codes of docs/PROTOCOL.md §5 this SDK names. */
export const Code = {
  NoError: 0x00,
  ProtocolError: 0x01,
  FrameTooLarge: 0x02,
  UnsupportedVersion: 0x03,
  AuthFailed: 0x04,
  HandshakeTimeout: 0x05,
  NodeFull: 0x06,
  GoingAway: 0x07,
  SlowConsumer: 0x08,
  InternalError: 0x09,
  CredentialsRevoked: 0x0b,
  InvalidTopic: 0x101,
  InvalidPattern: 0x102,
  DuplicateId: 0x103,
  TooManySubscriptions: 0x104,
  PayloadTooLarge: 0x105,
  PermissionDenied: 0x106,
  NoProvider: 0x107,
  Timeout: 0x108,
  ProviderDisconnected: 0x109,
  Busy: 0x10a,
  InvalidProcedure: 0x10b,
  TooManyRegistrations: 0x10c,
  FlowControlError: 0x10d,
  StreamsUnsupported: 0x10e,
  ApplicationError: 0x1000,
  NotFound: 0x1001,
  InvalidArguments: 0x1002,
} as const;

/** Every error this SDK throws. `code` is the protocol's code when there is one. */
export class FoveaError extends Error {
  constructor(message: string, readonly code: number = Code.InternalError) {
    super(message);
    this.name = new.target.name;
  }
}

/** The connection could not be opened (no node, refused, bad URL). */
export class ConnectError extends FoveaError {}
/** The node refused the realm or credential. */
export class AuthError extends FoveaError {}
/** The node closed the connection, with its code and reason. */
export class ClosedError extends FoveaError {}
/** The client is closed, or lost its connection while the operation was in flight. */
export class DisconnectedError extends FoveaError {}
/** No provider is registered for the procedure. */
export class NoProviderError extends FoveaError {}
/** The call's deadline passed. */
export class TimeoutError extends FoveaError {}
/** Every provider (or the caller) is at its limit: try later. */
export class BusyError extends FoveaError {}
/** The provider went away before it answered. */
export class ProviderDisconnectedError extends FoveaError {}
/** The node refused an operation (`ERROR`, or a `RESULT` with a node code). */
export class RefusedError extends FoveaError {}
/** The provider answered with an error of its own (code 0x1000 and up). */
export class RemoteError extends FoveaError {}
/** The caller's agent did not answer a question (`Request.ask`); `code` is its JSON-RPC code. */
export class NotAnsweredError extends FoveaError {}
/** The JSON-RPC code of a question deferred to an input-required result (§4.7). */
export const INPUT_REQUIRED = -32090;
/**
 * The question goes to an MCP 2026-07-28 agent in an input-required result: end this run
 * of the handler (fail the request); the agent's retry runs it again, and the question
 * asked with the same key is then answered at once.
 */
export class InputRequiredError extends NotAnsweredError {}

/** The error a failed `RESULT` stands for. */
export function resultError(code: number, message: string, procedure: string): FoveaError {
  switch (code) {
    case Code.NoProvider:
      return new NoProviderError(`no provider for ${procedure}: ${message}`, code);
    case Code.Timeout:
      return new TimeoutError(`the call to ${procedure} timed out`, code);
    case Code.Busy:
      return new BusyError(`${procedure}: ${message}`, code);
    case Code.ProviderDisconnected:
      return new ProviderDisconnectedError(`the provider of ${procedure} disconnected`, code);
    default:
      return code >= Code.ApplicationError
        ? new RemoteError(message, code)
        : new RefusedError(`${procedure}: ${message} (code 0x${code.toString(16)})`, code);
  }
}
