// use-execution.js: a Vue 3 composable on top of watchExecution: one execution's status,
// progress, nodes and log as refs, and the connection's state. It watches while the component
// (or effect scope) that called it lives, follows a changing execution id, and closes its socket
// on unmount. Imported as `@aiagent-live/client/vue`; needs vue >= 3.3 (a bundler, or an import map).
//
//   const { status, progress, result, error, nodes, logs, connection } =
//     useExecution(() => props.executionId, { baseUrl, getToken });

import { computed, getCurrentScope, onScopeDispose, ref, shallowRef, toValue, watch } from 'vue';
import { TERMINAL_STATUSES, watchExecution } from './live-client.js';

const DEFAULT_MAX_LOG_LINES = 500;

/**
 * executionId: a string, a ref or a getter (a new id closes the old socket and watches the new
 * execution; null or '' watches nothing). options: those of watchExecution, read when a watch
 * starts (your callbacks are called too, after the refs are updated), and maxLogLines (500): the
 * newest lines kept in `logs`.
 */
export function useExecution(executionId, options = {}) {
  const { maxLogLines = DEFAULT_MAX_LOG_LINES, ...watchOptions } = options;
  // Messages are replaced whole, never changed in place: shallow refs, no deep proxies.
  const statusMessage = shallowRef(null);
  const nodes = shallowRef([]);
  const logs = shallowRef([]);
  const connection = ref('idle');
  const lastError = shallowRef(null);
  const watcher = shallowRef(null);

  function close() {
    if (watcher.value) watcher.value.close();
    watcher.value = null;
  }

  function start(id) {
    close();
    statusMessage.value = null;
    nodes.value = [];
    logs.value = [];
    lastError.value = null;
    connection.value = 'idle';
    // Nothing to watch, or no WebSocket (server-side rendering): stay idle.
    if (!id || typeof WebSocket === 'undefined') return;
    const call = (name, ...args) => watchOptions[name] && watchOptions[name](...args);
    watcher.value = watchExecution(id, {
      ...watchOptions,
      onStatus(message) {
        statusMessage.value = message;
        call('onStatus', message);
      },
      onNode(message) {
        // In workflow order (the snapshot's), each node replaced by its newest state.
        const at = nodes.value.findIndex((node) => node.node_id === message.node_id);
        nodes.value = at < 0 ? [...nodes.value, message]
          : nodes.value.map((node, i) => (i === at ? message : node));
        call('onNode', message);
      },
      onLog(message) {
        logs.value = [...logs.value, message].slice(-maxLogLines);
        call('onLog', message);
      },
      onResync(info) {
        nodes.value = [];
        logs.value = [];
        call('onResync', info);
      },
      onState(state, info) {
        connection.value = state;
        call('onState', state, info);
      },
      onError(error) {
        lastError.value = error;
        call('onError', error);
      },
    });
  }

  watch(() => toValue(executionId), start, { immediate: true });
  if (getCurrentScope()) onScopeDispose(close); // a component's unmount, or scope.stop()

  const status = computed(() => statusMessage.value && statusMessage.value.status);
  return {
    status,
    progress: computed(() => (statusMessage.value && statusMessage.value.progress) || 0),
    message: computed(() => statusMessage.value && statusMessage.value.message),
    result: computed(() => statusMessage.value && statusMessage.value.result),
    error: computed(() => statusMessage.value && statusMessage.value.error),
    executionTime: computed(() => statusMessage.value && statusMessage.value.execution_time),
    finished: computed(() => TERMINAL_STATUSES.has(status.value)),
    statusMessage,
    nodes,
    logs,
    connection,
    lastError,
    watcher,
    close,
  };
}
