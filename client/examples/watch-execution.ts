// A typed use of the plain client, as an app would write it. Checked by `npm run typecheck`: every
// line must compile, and every @ts-expect-error must be an error.
import {
  CLOSE,
  TERMINAL_STATUSES,
  tokenExpiry,
  watchExecution,
  watchFeed,
  type ExecutionStatus,
  type LiveError,
  type ServerMessage,
  type StatusMessage,
} from '@aiagent-live/client';

declare function render(status: ExecutionStatus, progress: number): void;
declare function showError(message: string): void;

const watcher = watchExecution('0b9f1f0c-6a51-4c36-9a55-6f3f0e0d7f21', {
  baseUrl: 'http://localhost:8037',
  getToken: async () => 'a JWT from your identity provider',
  onStatus(message) {
    render(message.status, message.progress);
    if (message.status === 'completed') console.log(message.result, message.execution_time);
    else if (message.status === 'failed') showError(message.error ?? 'failed');
  },
  onNode: (node) => console.log(node.node_id, node.status, node.attempt, node.output_truncated),
  onLog: (line) => console.log(line.level.toUpperCase(), line.node_id ?? '-', line.message),
  onResync: ({ reason }) => console.log('start over:', reason),
  onState(state, info) {
    if (state === 'reconnecting') console.log(`again in ${info.delayMs} ms (closed ${info.code})`);
    if (state === 'live' && info.resumed) console.log('resumed after seq', info.since);
  },
  onError: (error: LiveError) => {
    if (error.fatal && error.code === 403) showError(error.message); // this page's origin was refused
  },
  backoffMaxMs: 30_000,
});

const seq: number | null = watcher.lastSeq;
const latest: StatusMessage | null = watcher.status;
console.log(seq, latest, watcher.state, watcher.connections, watcher.resumes, watcher.lastError?.message);
// @ts-expect-error: the watcher's state is its own
watcher.state = 'live';
watcher.close();

// @ts-expect-error: not a status
const finished: ExecutionStatus = 'done';
console.log(finished, TERMINAL_STATUSES.has('completed'), CLOSE.NOT_FOUND === 4404, tokenExpiry('a.b.c'));

// @ts-expect-error: execution ids are strings
watchExecution(42);
// @ts-expect-error: onStatus gets a status message, not a string
watchExecution('id', { onStatus: (message: string) => console.log(message) });

/** Every message type, narrowed: `synced` ends the snapshot. */
export function describe(message: ServerMessage): string {
  switch (message.type) {
    case 'status': return `${message.status} ${message.progress}%`;
    case 'node': return `${message.node_id}: ${message.status}`;
    case 'log': return `${message.ts} ${message.message}`;
    case 'synced': return `snapshot complete at seq ${message.seq}`;
    case 'error': return message.message;
    case 'pong': return 'pong';
    default: {
      const unknown: never = message;
      return unknown;
    }
  }
}

const feed = watchFeed({
  token: 'a JWT',
  status: 'running',
  onSync: ({ resumed }) => console.log('reload the list over REST', resumed),
  onStatus: (message) => console.log(message.execution_id, message.seq, message.status),
});
feed.close();
// @ts-expect-error: the feed filters by one of the statuses
watchFeed({ status: 'done' });
