/**
 * The ledger invariants of docs/operations.md, checked straight in Postgres, the one way every test checks them:
 * - every transaction's postings sum to zero per currency (per transaction: two unbalanced transactions that
 *   cancel each other out still fail), and every transaction has postings;
 * - a wallet never goes negative, and its cached balance equals the sum of its postings.
 */
import pg from "pg";
import { expect } from "vitest";

export interface LedgerCheck {
  transactions: number;
  postings: number;
  wallets: number;
}

export async function assertLedgerBalanced(databaseUrl: string): Promise<LedgerCheck> {
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  try {
    const unbalanced = await db.query<{ transaction_id: string; currency: string; total: string }>(
      `select transaction_id, currency, sum(amount)::text as total from ledger_postings
        group by transaction_id, currency having sum(amount) <> 0 order by 1, 2`,
    );
    expect(unbalanced.rows, "ledger transactions whose postings do not sum to zero in a currency").toEqual([]);
    const empty = await db.query<{ id: string }>(
      `select t.id from ledger_transactions t where not exists (select 1 from ledger_postings p where p.transaction_id = t.id)`,
    );
    expect(empty.rows, "ledger transactions without postings").toEqual([]);
    const orphans = await db.query<{ id: string }>(
      `select p.id from ledger_postings p where not exists (select 1 from ledger_transactions t where t.id = p.transaction_id)`,
    );
    expect(orphans.rows, "postings without a transaction").toEqual([]);
    const wallets = await db.query<{ account_id: string; kind: string; balance: string; posted: string }>(
      `select w.account_id, w.kind, w.balance::text as balance,
              coalesce((select sum(p.amount) from ledger_postings p where p.ledger_account = 'wallet:' || w.account_id || ':' || w.kind), 0)::text as posted
         from wallets w order by 1, 2`,
    );
    const negative = wallets.rows.filter((w) => BigInt(w.balance) < 0n);
    expect(negative, "wallets below zero").toEqual([]);
    const drifted = wallets.rows.filter((w) => BigInt(w.balance) !== BigInt(w.posted));
    expect(drifted, "wallets whose cached balance differs from the sum of their postings").toEqual([]);
    const counts = await db.query<{ t: number; p: number }>(`select (select count(*)::int from ledger_transactions) as t, (select count(*)::int from ledger_postings) as p`);
    return { transactions: counts.rows[0]!.t, postings: counts.rows[0]!.p, wallets: wallets.rows.length };
  } finally {
    await db.end();
  }
}
