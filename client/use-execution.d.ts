// Types of use-execution.js, the Vue 3 composable (`@aiagent-live/client/vue`).

import type { ComputedRef, MaybeRefOrGetter, Ref, ShallowRef } from 'vue';
import type {
  ConnectionState,
  ExecutionStatus,
  ExecutionWatcher,
  Json,
  LiveError,
  LogMessage,
  NodeMessage,
  StatusMessage,
  WatchExecutionOptions,
} from './live-client.js';

export interface UseExecutionOptions extends WatchExecutionOptions {
  /** 500: the newest log lines kept in `logs`. */
  maxLogLines?: number;
}

/** Refs that follow one execution; they are the composable's to change (read-only here). */
export interface UseExecution {
  /** null until the first status arrives. */
  status: ComputedRef<ExecutionStatus | null>;
  /** 0..100 */
  progress: ComputedRef<number>;
  message: ComputedRef<string | null>;
  result: ComputedRef<Json>;
  error: ComputedRef<string | null>;
  executionTime: ComputedRef<number | null>;
  /** completed, failed or cancelled: the socket has stopped. */
  finished: ComputedRef<boolean>;
  /** The latest status message whole. */
  statusMessage: Readonly<ShallowRef<StatusMessage | null>>;
  /** Every node in workflow order, each in its newest state. */
  nodes: Readonly<ShallowRef<readonly NodeMessage[]>>;
  /** The newest maxLogLines log lines, oldest first. */
  logs: Readonly<ShallowRef<readonly LogMessage[]>>;
  /** idle while there is no execution id to watch. */
  connection: Readonly<Ref<ConnectionState>>;
  /** The last error reported; `fatal` when the client stopped (e.g. this page's origin refused). */
  lastError: Readonly<ShallowRef<LiveError | null>>;
  /** The watcher in use, for its counters (connections, resumes, lastSeq). */
  watcher: Readonly<ShallowRef<ExecutionWatcher | null>>;
  /** Stop watching now (unmounting the component does it too). */
  close(): void;
}

/**
 * Watch one execution while the calling component (or effect scope) lives. `executionId` may be a
 * string, a ref or a getter: a new id closes the old socket and watches the new execution; null
 * or '' watches nothing.
 */
export declare function useExecution(
  executionId: MaybeRefOrGetter<string | null | undefined>,
  options?: UseExecutionOptions,
): UseExecution;
