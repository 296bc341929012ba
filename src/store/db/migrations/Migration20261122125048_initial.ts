import { Migration } from '@mikro-orm/migrations';

export class Migration20261122125048_initial extends Migration {

  override name = 'Migration20261122125048_initial';

  override up(): void | Promise<void> {
    this.addSql(`create table "accounts" ("id" varchar(64) not null, "name" varchar(200) not null, "created_at" timestamptz not null default now(), "capacity_version" int not null default 0, "capacity_synced" int not null default 0, primary key ("id"));`);

    this.addSql(`create table "api_keys" ("id" varchar(32) not null, "account_id" varchar(64) not null, "subscription_id" varchar(64) not null, "name" varchar(200) not null, "secret_hash" varchar(64) not null, "status" text not null, "owner" boolean not null default false, "overage" boolean not null default false, "sub_limits" jsonb not null, "expires_at" timestamptz null, "created_at" timestamptz not null default now(), "revoked_at" timestamptz null, primary key ("id"));`);
    this.addSql(`create index "api_keys_account_id_index" on "api_keys" ("account_id");`);
    this.addSql(`alter table "api_keys" add constraint "api_keys_status_check" check ("status" in ('active', 'revoked'));`);

    this.addSql(`create table "quota_grants" ("id" varchar(64) not null, "account_id" varchar(64) not null, "subscription_id" varchar(64) not null, "limit_name" varchar(64) not null, "product" varchar(64) not null default '', "amount" bigint not null, "priority" int not null default 0, "valid_from" timestamptz not null, "valid_until" timestamptz null, "source" text not null, "transaction_id" varchar(64) not null, "created_at" timestamptz not null default now(), primary key ("id"));`);
    this.addSql(`create index "quota_grants_account_id_index" on "quota_grants" ("account_id");`);
    this.addSql(`alter table "quota_grants" add constraint "quota_grants_source_check" check ("source" in ('topup', 'adjustment'));`);

    this.addSql(`create table "idempotency_records" ("scope" varchar(128) not null, "key" varchar(128) not null, "request_hash" varchar(64) not null, "response" jsonb not null, "created_at" timestamptz not null default now(), primary key ("scope", "key"));`);

    this.addSql(`create table "ledger_postings" ("id" varchar(64) not null, "transaction_id" varchar(64) not null, "ledger_account" varchar(200) not null, "currency" varchar(3) not null, "amount" bigint not null, primary key ("id"));`);
    this.addSql(`create index "ledger_postings_transaction_id_index" on "ledger_postings" ("transaction_id");`);
    this.addSql(`create index "ledger_postings_ledger_account_index" on "ledger_postings" ("ledger_account");`);

    this.addSql(`create table "ledger_transactions" ("id" varchar(64) not null, "account_id" varchar(64) not null, "type" text not null, "created_at" timestamptz not null default now(), "external_reference" varchar(256) null, "description" text not null default '', primary key ("id"));`);
    this.addSql(`alter table "ledger_transactions" add constraint "ledger_transactions_external_reference_unique" unique ("external_reference");`);
    this.addSql(`create index "ledger_transactions_account_id_created_at_index" on "ledger_transactions" ("account_id", "created_at");`);
    this.addSql(`alter table "ledger_transactions" add constraint "ledger_transactions_type_check" check ("type" in ('deposit', 'quota_purchase', 'addon_change', 'adjustment', 'usage'));`);

    this.addSql(`create table "plans" ("id" varchar(64) not null, "name" varchar(200) not null, "version" int not null default 1, "spec" jsonb not null, "updated_at" timestamptz not null default now(), primary key ("id"));`);

    this.addSql(`create table "subscriptions" ("id" varchar(64) not null, "account_id" varchar(64) not null, "plan_id" varchar(64) not null, "starts_at" timestamptz not null, "ends_at" timestamptz null, "access_blocks" jsonb not null, "add_ons" jsonb not null, "status" text not null, "created_at" timestamptz not null default now(), primary key ("id"));`);
    this.addSql(`create index "subscriptions_account_id_index" on "subscriptions" ("account_id");`);
    this.addSql(`alter table "subscriptions" add constraint "subscriptions_status_check" check ("status" in ('active', 'cancelled'));`);

    this.addSql(`create table "usage_snapshots" ("account_id" varchar(64) not null, "limit_id" varchar(200) not null, "state" jsonb not null, "updated_at" timestamptz not null default now(), primary key ("account_id", "limit_id"));`);

    this.addSql(`create table "wallets" ("account_id" varchar(64) not null, "kind" text not null, "balance" bigint not null, "total_deposited" bigint not null default '0', "updated_at" timestamptz not null default now(), primary key ("account_id", "kind"));`);
    this.addSql(`alter table "wallets" add constraint "wallets_balance_check" check (balance >= 0);`);
    this.addSql(`alter table "wallets" add constraint "wallets_kind_check" check ("kind" in ('prepaid', 'credit'));`);
  }

}
