/**
 * Bad input to the client's checkAndReserve is a QuotaInputError naming the field, raised before any RPC, with or
 * without leases (the lease path checks a plain call field by field instead of building its protobuf message).
 */
import { afterAll, describe, expect, it } from "vitest";
import { createQuotaClient, QuotaInputError, type CheckRequest } from "../../packages/client/src/index.ts";

// Nothing listens there: a request that got past the checks would fail as unavailable, not as input.
const clients = { plain: createQuotaClient({ address: "127.0.0.1:9", deadlineMs: 200 }), leases: createQuotaClient({ address: "127.0.0.1:9", deadlineMs: 200, leases: true }) };

const bad: Array<[string, unknown, RegExp]> = [
  ["not an object", null, /request/],
  ["no key", { product: "p", method: "m" }, /apiKey.*exactly one/],
  ["both keys", { apiKey: "a", keyId: "k", product: "p", method: "m" }, /apiKey.*exactly one/],
  ["a non-string apiKey beside a keyId", { apiKey: 5, keyId: "k", product: "p", method: "m" }, /apiKey.*string/],
  ["a non-string keyId beside an apiKey", { apiKey: "a", keyId: {}, product: "p", method: "m" }, /keyId.*string/],
  ["no product", { apiKey: "a", method: "m" }, /product/],
  ["empty method", { apiKey: "a", product: "p", method: "" }, /method/],
  ["an inherited name as mode", { apiKey: "a", product: "p", method: "m", mode: "toString" }, /mode.*ENFORCE/],
];

describe("client input checks", () => {
  afterAll(() => Promise.all([clients.plain.close(), clients.leases.close()]));
  for (const [kind, client] of Object.entries(clients)) {
    for (const [what, request, message] of bad) {
      it(`${kind}: ${what}`, async () => {
        const e = await client.checkAndReserve(request as CheckRequest).then(() => undefined, (err: unknown) => err);
        expect(e).toBeInstanceOf(QuotaInputError);
        expect(String((e as Error).message)).toMatch(message);
      });
    }
  }
});
