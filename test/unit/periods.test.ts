import { describe, expect, it } from "vitest";
import { dailyCycle, fixedBounds, monthlyCycle } from "../../src/core/periods.ts";

const d = (s: string) => Date.parse(s);

describe("monthly cycles on the subscription anniversary", () => {
  it("a subscription started on the 31st renews on the last day of shorter months, and on the 31st again after", () => {
    const anchor = d("2026-01-31T10:00:00Z");
    expect(monthlyCycle(anchor, d("2026-02-15T00:00:00Z"))).toEqual({ start: anchor, end: d("2026-02-28T10:00:00Z") });
    expect(monthlyCycle(anchor, d("2026-02-28T10:00:00Z"))).toEqual({ start: d("2026-02-28T10:00:00Z"), end: d("2026-03-31T10:00:00Z") });
    expect(monthlyCycle(anchor, d("2026-04-30T09:59:59Z")).start).toBe(d("2026-03-31T10:00:00Z"));
    expect(monthlyCycle(anchor, d("2026-04-30T10:00:00Z"))).toEqual({ start: d("2026-04-30T10:00:00Z"), end: d("2026-05-31T10:00:00Z") });
  });

  it("handles leap years and year boundaries", () => {
    const anchor = d("2027-12-31T00:00:00Z");
    expect(monthlyCycle(anchor, d("2028-02-29T12:00:00Z")).start).toBe(d("2028-02-29T00:00:00Z"));
    expect(monthlyCycle(anchor, d("2028-01-15T00:00:00Z"))).toEqual({ start: anchor, end: d("2028-01-31T00:00:00Z") });
  });

  it("gives the previous, current and next boundaries for the counter store to pick from", () => {
    const anchor = d("2026-01-15T00:00:00Z");
    expect(fixedBounds("monthly", anchor, d("2026-03-20T00:00:00Z"))).toEqual([
      d("2026-02-15T00:00:00Z"),
      d("2026-03-15T00:00:00Z"),
      d("2026-04-15T00:00:00Z"),
      d("2026-05-15T00:00:00Z"),
    ]);
  });
});

describe("daily periods", () => {
  it("start at the anchor's time of day", () => {
    const anchor = d("2026-01-15T06:30:00Z");
    expect(dailyCycle(anchor, d("2026-03-20T05:00:00Z"))).toEqual({ start: d("2026-03-19T06:30:00Z"), end: d("2026-03-20T06:30:00Z") });
  });
});
