// A worker module: the default export gets the job's argument and returns JSON.
import { encode } from "mechanics:hex";
import uuid from "mechanics:uuid";

export default async function main({ name = "world" } = {}) {
  const greeting = `Hello, ${name}!`;
  const bytes = Uint8Array.from(greeting, (c) => c.charCodeAt(0) & 0xff);
  return { greeting, hex: encode(bytes), request_id: uuid("v4").length === 36 };
}
