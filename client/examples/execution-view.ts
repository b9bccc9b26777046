// A typed Vue 3 component on the composable (the README's Vue example, as a render function so
// that tsc alone can check it). Checked by `npm run typecheck`.
import { defineComponent, h, ref } from 'vue';
import { useExecution, type UseExecution } from '@aiagent-live/client/vue';

export default defineComponent({
  props: { executionId: { type: String, required: true } },
  setup(props) {
    const { status, progress, result, error, connection, nodes, logs, lastError, finished } = useExecution(
      () => props.executionId,
      { baseUrl: 'http://localhost:8037', getToken: () => 'a JWT', maxLogLines: 200 },
    );
    // @ts-expect-error: the refs are the composable's to change
    progress.value = 50;
    // @ts-expect-error: and so are the nodes
    nodes.value = [];
    return () => h('div', [
      h('div', `Status: ${status.value ?? 'connecting'} (${connection.value})`),
      h('div', { class: 'progress' }, [h('div', { class: 'bar', style: { width: `${progress.value}%` } })]),
      result.value !== null ? h('pre', JSON.stringify(result.value)) : null,
      error.value ? h('div', { class: 'error' }, error.value) : null,
      lastError.value?.fatal ? h('div', { class: 'error' }, lastError.value.message) : null,
      h('ul', nodes.value.map((node) => h('li', { key: node.node_id }, `${node.title}: ${node.status}`))),
      h('pre', logs.value.map((line) => line.message).join('\n')),
      finished.value ? h('small', 'finished') : null,
    ]);
  },
});

// The id may be a ref too, or nothing yet.
const selected = ref<string | null>(null);
const view: UseExecution = useExecution(selected);
view.close();
// @ts-expect-error: an id, not a number
useExecution(7);
