import { Migration } from '@mikro-orm/migrations';

export class Migration20261122125854_wallet_spent_posted extends Migration {

  override name = 'Migration20261122125854_wallet_spent_posted';

  override up(): void | Promise<void> {
    this.addSql(`alter table "wallets" add "spent_posted" bigint not null default '0';`);
  }

  override down(): void | Promise<void> {
    this.addSql(`alter table "wallets" drop column "spent_posted";`);
  }

}
