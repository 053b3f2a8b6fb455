// The default export gets { event, task, payload } and returns JSON: the task's result.
import { encode } from "mechanics:hex";

export default async function main({ task, payload }) {
  const name = payload?.name ?? "world";
  const greeting = `Hello, ${name}!`;
  const bytes = Uint8Array.from(greeting, (c) => c.charCodeAt(0) & 0xff);
  return { greeting, hex: encode(bytes), task: task.id, attempt: task.attempt };
}
