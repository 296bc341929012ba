/** The QuotaAdminService (control plane) over the core: admin token (+ rate limit), decode, call, encode. */
import { create } from "@bufbuild/protobuf";
import {
  AccountSchema,
  AdjustResponseSchema,
  ApplyPlansResponseSchema,
  CancelSubscriptionResponseSchema,
  CreateAccountResponseSchema,
  CreateApiKeyResponseSchema,
  CreateSubscriptionResponseSchema,
  DepositResponseSchema,
  GetAccountResponseSchema,
  LedgerTransactionSchema,
  ListApiKeysResponseSchema,
  ListLedgerResponseSchema,
  ListPlansResponseSchema,
  RevokeApiKeyResponseSchema,
  SetAddOnResponseSchema,
  type AdjustRequest,
  type AdjustResponse,
  type ApplyPlansRequest,
  type ApplyPlansResponse,
  type CancelSubscriptionRequest,
  type CancelSubscriptionResponse,
  type CreateAccountRequest,
  type CreateAccountResponse,
  type CreateApiKeyRequest,
  type CreateApiKeyResponse,
  type CreateSubscriptionRequest,
  type CreateSubscriptionResponse,
  type DepositRequest,
  type DepositResponse,
  type GetAccountRequest,
  type GetAccountResponse,
  type ListApiKeysRequest,
  type ListApiKeysResponse,
  type ListLedgerRequest,
  type ListLedgerResponse,
  type ListPlansRequest,
  type ListPlansResponse,
  type RevokeApiKeyRequest,
  type RevokeApiKeyResponse,
  type SetAddOnRequest,
  type SetAddOnResponse,
} from "../gen/quota/v1/admin_pb.ts";
import type { AdminService } from "../core/admin-service.ts";
import { authenticateAdmin, type AuthConfig, type CallContext } from "./auth.ts";
import { grant, keyMessage, money, planSummary, subscription, timestampField, ts } from "./conversions.ts";

export interface AdminApi {
  createAccount(req: CreateAccountRequest, ctx: CallContext): Promise<CreateAccountResponse>;
  getAccount(req: GetAccountRequest, ctx: CallContext): Promise<GetAccountResponse>;
  applyPlans(req: ApplyPlansRequest, ctx: CallContext): Promise<ApplyPlansResponse>;
  listPlans(req: ListPlansRequest, ctx: CallContext): Promise<ListPlansResponse>;
  createSubscription(req: CreateSubscriptionRequest, ctx: CallContext): Promise<CreateSubscriptionResponse>;
  cancelSubscription(req: CancelSubscriptionRequest, ctx: CallContext): Promise<CancelSubscriptionResponse>;
  setAddOn(req: SetAddOnRequest, ctx: CallContext): Promise<SetAddOnResponse>;
  createApiKey(req: CreateApiKeyRequest, ctx: CallContext): Promise<CreateApiKeyResponse>;
  revokeApiKey(req: RevokeApiKeyRequest, ctx: CallContext): Promise<RevokeApiKeyResponse>;
  listApiKeys(req: ListApiKeysRequest, ctx: CallContext): Promise<ListApiKeysResponse>;
  deposit(req: DepositRequest, ctx: CallContext): Promise<DepositResponse>;
  adjust(req: AdjustRequest, ctx: CallContext): Promise<AdjustResponse>;
  listLedger(req: ListLedgerRequest, ctx: CallContext): Promise<ListLedgerResponse>;
}

export function createAdminApi(admin: AdminService, auth: AuthConfig, adminLimiter?: (caller: string) => void): AdminApi {
  const asAdmin = (ctx: CallContext) => {
    authenticateAdmin(auth, ctx);
    adminLimiter?.(ctx.header("authorization") ?? "");
  };
  return {
  async createAccount(req, ctx) {
    asAdmin(ctx);
    const a = await admin.createAccount({ id: req.id, name: req.name, requestId: req.requestId });
    return create(CreateAccountResponseSchema, { account: create(AccountSchema, { id: a.id, name: a.name, createdAt: ts(a.createdAt.getTime()) }) });
  },
  async getAccount(req, ctx) {
    asAdmin(ctx);
    const a = await admin.getAccount(req.id);
    return create(GetAccountResponseSchema, { account: create(AccountSchema, { id: a.id, name: a.name, createdAt: ts(a.createdAt.getTime()) }) });
  },
  async applyPlans(req, ctx) {
    asAdmin(ctx);
    const plans = await admin.applyPlans(req.document);
    return create(ApplyPlansResponseSchema, { plans: plans.map(planSummary) });
  },
  async listPlans(_req, ctx) {
    asAdmin(ctx);
    const plans = await admin.listPlans();
    return create(ListPlansResponseSchema, { plans: plans.map(planSummary) });
  },
  async createSubscription(req, ctx) {
    asAdmin(ctx);
    const startsAt = timestampField("starts_at", req.startsAt);
    const endsAt = timestampField("ends_at", req.endsAt);
    const s = await admin.createSubscription({
      accountId: req.accountId,
      planId: req.planId,
      ...(startsAt !== undefined ? { startsAt } : {}),
      ...(endsAt !== undefined ? { endsAt } : {}),
      accessBlocks: req.accessBlocks,
      addOns: { ...req.addOns },
      requestId: req.requestId,
    });
    return create(CreateSubscriptionResponseSchema, { subscription: subscription(s) });
  },
  async cancelSubscription(req, ctx) {
    asAdmin(ctx);
    return create(CancelSubscriptionResponseSchema, { subscription: subscription(await admin.cancelSubscription(req.subscriptionId)) });
  },
  async setAddOn(req, ctx) {
    asAdmin(ctx);
    const r = await admin.setAddOn({ subscriptionId: req.subscriptionId, packageId: req.packageId, limit: req.limit, requestId: req.requestId });
    return create(SetAddOnResponseSchema, { subscription: subscription(r.subscription), transactionId: r.transactionId, newLimit: r.newLimit });
  },
  async createApiKey(req, ctx) {
    asAdmin(ctx);
    const expiresAt = timestampField("expires_at", req.expiresAt);
    const r = await admin.createApiKey({
      accountId: req.accountId,
      subscriptionId: req.subscriptionId,
      name: req.name,
      owner: req.owner,
      overageEnabled: req.overageEnabled,
      subLimits: { ...req.subLimits },
      ...(expiresAt !== undefined ? { expiresAt } : {}),
      requestId: req.requestId,
    });
    return create(CreateApiKeyResponseSchema, { key: keyMessage(r.key), apiKey: r.apiKey });
  },
  async revokeApiKey(req, ctx) {
    asAdmin(ctx);
    return create(RevokeApiKeyResponseSchema, { key: keyMessage(await admin.revokeApiKey(req.keyId)) });
  },
  async listApiKeys(req, ctx) {
    asAdmin(ctx);
    return create(ListApiKeysResponseSchema, { keys: (await admin.listApiKeys(req.accountId)).map(keyMessage) });
  },
  async deposit(req, ctx) {
    asAdmin(ctx);
    const p = req.payment;
    const r = await admin.deposit({ accountId: req.accountId, wallet: req.wallet, reference: p?.reference ?? "", provider: p?.provider ?? "", ...(p?.amount ? { amount: p.amount } : {}) });
    return create(DepositResponseSchema, { transactionId: r.transactionId, balance: money(r.balance), replayed: r.replayed });
  },
  async adjust(req, ctx) {
    asAdmin(ctx);
    const t = req.target;
    const validUntil = t.case === "quota" ? timestampField("quota.valid_until", t.value.validUntil) : undefined;
    const r = await admin.adjust({
      accountId: req.accountId,
      reason: req.reason,
      requestId: req.requestId,
      target:
        t.case === "quota"
          ? { case: "quota", subscriptionId: t.value.subscriptionId, limit: t.value.limit, product: t.value.product, units: t.value.units, priority: t.value.priority, ...(validUntil !== undefined ? { validUntil } : {}) }
          : t.case === "wallet"
            ? { case: "wallet", wallet: t.value.wallet, ...(t.value.amount ? { amount: t.value.amount } : {}) }
            : { case: undefined },
    });
    return create(AdjustResponseSchema, { transactionId: r.transactionId, grant: r.grant ? grant(r.grant) : undefined, balance: r.balance !== undefined ? money(r.balance) : undefined });
  },
  async listLedger(req, ctx) {
    asAdmin(ctx);
    const r = await admin.listLedger({ accountId: req.accountId, pageSize: req.pageSize, pageToken: req.pageToken });
    return create(ListLedgerResponseSchema, {
      nextPageToken: r.nextPageToken,
      transactions: r.transactions.map((t) =>
        create(LedgerTransactionSchema, {
          id: t.id,
          accountId: t.accountId,
          type: t.type,
          createdAt: ts(t.createdAt.getTime()),
          externalReference: t.externalReference ?? "",
          description: t.description,
          postings: t.postings.map((p) => ({ ledgerAccount: p.ledgerAccount, currency: p.currency, amountMicros: p.amount })),
        }),
      ),
    });
  },
  };
}
