import { InMemoryCounterStore } from "../../src/store/memory/in-memory-counter-store.ts";
import { describeCounterStore } from "./counter-store.contract.ts";
import { describeCounterStoreProperties, propertyRuns } from "./counter-store.property.ts";

describeCounterStore("InMemoryCounterStore", async (clock) => {
  const store = new InMemoryCounterStore({ clock });
  return { store, wipe: async () => store.wipe(), cleanup: async () => {} };
});

describeCounterStoreProperties("InMemoryCounterStore", async (clock) => ({ store: new InMemoryCounterStore({ clock }), cleanup: async () => {} }), propertyRuns(500));
