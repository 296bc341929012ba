import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "../../src/core/errors.ts";
import { formatMicros, moneyToMicros, parseDecimalMicros } from "../../src/core/money.ts";
import { addOnMonthlyPrice, parsePlansDocument } from "../../src/core/plan.ts";

describe("money", () => {
  it("converts Money to exact micros and rejects what is not exact", () => {
    expect(moneyToMicros("a", { currencyCode: "USD", units: 10n, nanos: 500_000_000 })).toBe(10_500_000n);
    expect(moneyToMicros("a", { currencyCode: "", units: 0n, nanos: 1000 })).toBe(1n);
    expect(() => moneyToMicros("a", { currencyCode: "USD", units: 1n, nanos: 500 })).toThrow(/a.nanos: sub-micro/);
    expect(() => moneyToMicros("a", { currencyCode: "USD", units: 0n, nanos: 0 })).toThrow(/a: must be greater than zero/);
    expect(() => moneyToMicros("a", { currencyCode: "USD", units: -1n, nanos: 0 })).toThrow(InvalidArgumentError);
    expect(() => moneyToMicros("a", { currencyCode: "USD", units: 1n, nanos: -1000 })).toThrow(/same sign/);
    expect(() => moneyToMicros("a", { currencyCode: "EUR", units: 1n, nanos: 0 })).toThrow(/currency_code/);
    expect(() => moneyToMicros("a", undefined)).toThrow(/a: is required/);
    expect(() => moneyToMicros("a", { currencyCode: "USD", units: 10n ** 12n, nanos: 0 })).toThrow(/too large/);
  });

  it("parses and formats decimals without floats", () => {
    expect(parseDecimalMicros("p", "37.50")).toBe(37_500_000n);
    expect(parseDecimalMicros("p", "0.000002")).toBe(2n);
    expect(() => parseDecimalMicros("p", "0.0000001")).toThrow(/at most 6 decimals/);
    expect(() => parseDecimalMicros("p", "1e3")).toThrow(InvalidArgumentError);
    expect(formatMicros(37_500_000n)).toBe("37.50");
    expect(formatMicros(2n)).toBe("0.000002");
    expect(formatMicros(-1_000_000n)).toBe("-1.00");
  });
});

describe("plans documents", () => {
  it("lists every problem with its field path", () => {
    const bad = `
plans:
  - id: p1
    name: P1
    limits:
      - { name: q, kind: quota, limit: -5 }
      - { name: r, kind: rate, limit: 10, windw: 1s }
`;
    let err: InvalidArgumentError | undefined;
    try {
      parsePlansDocument(bad, "file.yaml");
    } catch (e) {
      err = e as InvalidArgumentError;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err!.message).toMatch(/^file\.yaml: /);
    expect(err!.message).toContain("plans[0].limits[0].limit: must be between 0 and 1e15");
    expect(err!.message).toContain("plans[0].limits[1]");
    expect(err!.message).toMatch(/windw/);
  });

  it("prices add-ons from the per-units rate: +25k/day at $1.50 per 1,000 is $37.50 a month", () => {
    const [plan] = parsePlansDocument(`
plans:
  - id: daily
    name: Daily
    limits:
      - name: daily
        kind: quota
        limit: 5000
        period: daily
        addOns: [{ id: plus-25k, amount: 25000 }]
        addOnPrice: { per: 1000, amount: "1.50" }
`);
    const l = plan!.limits[0]!;
    expect(addOnMonthlyPrice(l, l.addOns![0]!)).toBe(37_500_000n);
  });
});
