// Types of live-client.js: the messages of aiagent-live's WebSocket protocol (README: WebSocket
// protocol) and the two watchers. Kept beside the code they describe; tests/test_client_package.py
// checks with tsc that they compile, that a typed use of them does, and that every export of the
// module is declared here.

export type ExecutionStatus = 'pending' | 'running' | 'completed' | 'failed' | 'cancelled';
export type TerminalStatus = 'completed' | 'failed' | 'cancelled';
export type NodeStatus = 'pending' | 'running' | 'completed' | 'failed' | 'skipped' | 'cancelled';
export type LogLevel = 'debug' | 'info' | 'warning' | 'error';
/** Any JSON value: results, node outputs. */
export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

interface ExecutionEvent {
  execution_id: string;
  /** The execution's sequence number: gap-free, increasing, shared by its status, nodes and log. */
  seq: number;
  /** Part of a fresh snapshot that replaces what the client held (history was pruned past its cursor). */
  resync?: true;
}

/** The execution's state. The first eight fields are the original design's format. */
export interface StatusMessage extends ExecutionEvent {
  type: 'status';
  status: ExecutionStatus;
  /** 0..100 */
  progress: number;
  message: string | null;
  result: Json;
  error: string | null;
  /** Seconds from started_at to finished_at, once finished. */
  execution_time: number | null;
  workflow_id: string;
  started_at: string | null;
  finished_at: string | null;
  updated_at: string;
}

export interface NodeMessage extends ExecutionEvent {
  type: 'node';
  node_id: string;
  title: string;
  status: NodeStatus;
  /** 1 for the first run, 2 after one retry, ... */
  attempt: number;
  started_at: string | null;
  finished_at: string | null;
  error: string | null;
  /** The node's output, or the first ws_output_preview_chars of its JSON text when output_truncated. */
  output: Json;
  output_truncated: boolean;
}

export interface LogMessage extends ExecutionEvent {
  type: 'log';
  ts: string;
  level: LogLevel;
  node_id: string | null;
  message: string;
}

/** The snapshot (or the catch-up after `since`) is complete: what follows is live. */
export interface SyncedMessage {
  type: 'synced';
  execution_id: string;
  /** The last seq of the snapshot or catch-up. */
  seq: number;
}

/** A problem with the connection or a client message, never an execution's failure. */
export interface ErrorMessage {
  type: 'error';
  message: string;
  execution_id?: string;
}

export interface PongMessage {
  type: 'pong';
}

/** Every message a socket of /api/v1/ws/executions/{id} receives (new types may come: ignore them). */
export type ServerMessage =
  StatusMessage | NodeMessage | LogMessage | SyncedMessage | ErrorMessage | PongMessage;

/**
 * connecting, live, reconnecting; then finished (terminal status: stops), failed (4404, a token
 * refused, this page's origin refused: stops) or closed (by close()). `idle` until the first connect.
 */
export type ConnectionState =
  'idle' | 'connecting' | 'live' | 'reconnecting' | 'finished' | 'failed' | 'closed';

export interface StateInfo {
  /** live: a reconnect that resumed with `since`. */
  resumed?: boolean;
  /** live after a resume: the seq it resumed after. */
  since?: number | null;
  /** reconnecting, finished, failed: the close code (403: the page's origin was refused). */
  code?: number;
  reason?: string;
  /** reconnecting: the wait before the next try. */
  delayMs?: number;
  attempt?: number;
}

export interface LiveError {
  /**
   * A close code (4401 token, 4404 no such execution, ...), 403 when the service refused this
   * page's origin, 0 for an `error` message from the server.
   */
  code: number;
  /** The server's reason, e.g. "token expired", or for 403 the setting that allows the origin. */
  message: string;
  /** The client stopped: it will not reconnect. */
  fatal: boolean;
  /** The server's `error` message, when that is what this is. */
  detail?: ErrorMessage;
}

export interface ConnectionOptions {
  /** A bearer token; or getToken. */
  token?: string;
  /** Called at start when there is no `token`, on 4401 and before `exp`. */
  getToken?: () => string | Promise<string>;
  /** The service, e.g. "https://live.example.com"; default: where live-client.js was loaded from. */
  baseUrl?: string | URL;
  onState?: (state: ConnectionState, info: StateInfo) => void;
  onError?: (error: LiveError) => void;
  /** 500: first reconnect delay, doubled each failed try ... */
  backoffMinMs?: number;
  /** 15000: ... up to this, each delay jittered to 50-100 %. */
  backoffMaxMs?: number;
  /** 25000: application ping. */
  pingIntervalMs?: number;
  /** 10000: no pong by then (and nothing else either): reconnect. */
  pongTimeoutMs?: number;
  /** 60000: ask getToken() for a fresh token this long before `exp`. */
  refreshBeforeExpiryMs?: number;
}

export interface WatchExecutionOptions extends ConnectionOptions {
  /** Each message once, in order. */
  onStatus?: (message: StatusMessage) => void;
  onNode?: (message: NodeMessage) => void;
  onLog?: (message: LogMessage) => void;
  /** Forget the nodes and log lines you hold: a fresh snapshot follows. */
  onResync?: (info: { reason: 'reconnect' | 'resync' }) => void;
}

export interface WatchFeedOptions extends ConnectionOptions {
  /** Only this workflow's executions. */
  workflowId?: string;
  /** Only changes to this status. */
  status?: ExecutionStatus;
  /** (Re)subscribed, or the server may have missed a change: (re)load the list over REST now; the
   * feed does not replay what was missed. */
  onSync?: (info: { resumed: boolean }) => void;
  /** Each execution's status changes, newest only (by seq). */
  onStatus?: (message: StatusMessage) => void;
}

interface Watcher {
  readonly state: ConnectionState;
  /** Sockets opened so far (1 + reconnects). */
  readonly connections: number;
  /** Reconnects that resumed. */
  readonly resumes: number;
  readonly lastError: LiveError | null;
  /** Stop for good; no callback fires after this. */
  close(): void;
}

export interface ExecutionWatcher extends Watcher {
  readonly executionId: string;
  /** The latest status message. */
  readonly status: StatusMessage | null;
  /** The resume cursor: every event up to it has been applied. */
  readonly lastSeq: number | null;
}

export interface FeedWatcher extends Watcher {}

export declare const TERMINAL_STATUSES: ReadonlySet<ExecutionStatus>;

/** Close codes the service uses. */
export declare const CLOSE: Readonly<{
  FINISHED: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  TOO_SLOW: 1013;
  UNAUTHORIZED: 4401;
  NOT_FOUND: 4404;
  TOO_MANY_SOCKETS: 4429;
}>;

/** The `exp` claim of a JWT, in ms since the epoch; null when it cannot be read. */
export declare function tokenExpiry(token: string): number | null;

/** Watch one execution on /api/v1/ws/executions/{id}: reconnects, resumes, stops once it finished. */
export declare function watchExecution(
  executionId: string, options?: WatchExecutionOptions): ExecutionWatcher;

/** Watch the executions feed on /api/v1/ws: every status change the token may see. */
export declare function watchFeed(options?: WatchFeedOptions): FeedWatcher;
