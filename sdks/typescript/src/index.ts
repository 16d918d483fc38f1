// @fovea/client: the TypeScript SDK for fovea, over WebSocket (browsers and Node 22+).
export { connect, Client, Message, Subscription, Registration, Request, CallStream, ChunkStream, PublishStream, MCP_RESULT_TYPE } from "./client.js";
export type { ConnectOptions, Payload, PromptDescriptor, ResourceDescriptor, ServerInfo, ToolDescriptor, WebSocketLike } from "./client.js";
export type { Headers } from "./codec.js";
export {
  Code,
  FoveaError,
  ConnectError,
  AuthError,
  ClosedError,
  DisconnectedError,
  NoProviderError,
  TimeoutError,
  BusyError,
  ProviderDisconnectedError,
  RefusedError,
  NotAnsweredError,
  InputRequiredError,
  INPUT_REQUIRED,
  RemoteError,
} from "./errors.js";
