// A TypeScript worker: `mechanics worker add -f examples/ts-worker/worker.yml`. The server removes
// the types when the worker is added and runs the JavaScript; nothing is type-checked there (run
// `tsc -p examples/ts-worker` for that), but errors and console stack traces name the lines of
// this file.
import { encode } from "mechanics:hex";
import type { BufferLike } from "mechanics:hex";

/** What `mechanics task submit summary --payload '...'` sends. */
interface Payload {
  label?: string;
  items?: Item[];
}

interface Item {
  name: string;
  price: number;
  tags?: string[];
}

enum Band {
  Cheap = "cheap",
  Fair = "fair",
  Dear = "dear",
}

class Summary {
  private readonly bands = new Map<Band, number>();

  constructor(
    public readonly label: string,
    private readonly dearFrom: number = 100,
  ) {}

  add(item: Item): void {
    const band =
      item.price >= this.dearFrom ? Band.Dear : item.price >= 10 ? Band.Fair : Band.Cheap;
    this.bands.set(band, (this.bands.get(band) ?? 0) + 1);
  }

  counts(): Record<string, number> {
    return Object.fromEntries(this.bands);
  }
}

function total<T extends { price: number }>(items: readonly T[]): number {
  return items.reduce((sum, item) => sum + item.price, 0);
}

function bytesOf(text: string): BufferLike {
  return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
}

// `MechanicsWorkerArg` is declared in crates/mechanics-core/ts-types/mechanics-worker.d.ts.
export default function main({ task, payload }: MechanicsWorkerArg<Payload>) {
  const items = payload?.items ?? [];
  const summary = new Summary(payload?.label ?? "items");
  for (const item of items) {
    summary.add(item);
  }
  const sum = total(items);
  console.log(`task ${task.id}: ${items.length} items, total ${sum}`);
  if (items.some((item) => item.price < 0)) {
    throw new RangeError("prices must not be negative");
  }
  return {
    label: summary.label,
    total: sum,
    bands: summary.counts(),
    firstTag: items[0]?.tags?.[0] ?? null,
    labelHex: encode(bytesOf(summary.label)),
  };
}
