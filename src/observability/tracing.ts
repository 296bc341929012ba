/**
 * OpenTelemetry tracing, off by default. On when the standard variables ask for it: OTEL_TRACES_EXPORTER=otlp, or an
 * OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); never with OTEL_SDK_DISABLED=true
 * or OTEL_TRACES_EXPORTER=none. The OTLP/HTTP (protobuf) exporter reads its own OTEL_EXPORTER_OTLP_* settings
 * (endpoint, headers, timeout); the resource comes from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES.
 */
import { context, propagation, trace, type Tracer } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { defaultResource, resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, TracerProvider, type SpanProcessor } from "@opentelemetry/sdk-trace";

export const TRACER_NAME = "quota-authority";

export interface Tracing {
  tracer: Tracer;
  /** Exports every ended span now. */
  forceFlush(): Promise<void>;
  /** Flushes and stops the exporter; safe to call twice. */
  shutdown(): Promise<void>;
}

export function tracingWanted(env: NodeJS.ProcessEnv): boolean {
  if ((env.OTEL_SDK_DISABLED ?? "").toLowerCase() === "true") return false;
  const exporters = (env.OTEL_TRACES_EXPORTER ?? "").split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);
  if (exporters.includes("none")) return false;
  return exporters.includes("otlp") || Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
}

/** Starts tracing with the given span processor (tests pass a SimpleSpanProcessor over an in-memory exporter). */
export function startTracing(processor?: SpanProcessor, env: NodeJS.ProcessEnv = process.env): Tracing {
  const provider = new TracerProvider({
    resource: defaultResource().merge(resourceFromAttributes({ "service.name": env.OTEL_SERVICE_NAME || "quota-authority" })),
    spanProcessors: [processor ?? new BatchSpanProcessor({ exporter: new OTLPTraceExporter() })],
  });
  const contextManager = new AsyncLocalStorageContextManager();
  contextManager.enable();
  context.setGlobalContextManager(contextManager);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  let done: Promise<void> | undefined;
  return {
    tracer: provider.getTracer(TRACER_NAME),
    forceFlush: () => provider.forceFlush(),
    shutdown: () =>
      (done ??= (async () => {
        await provider.shutdown();
        trace.disable();
        context.disable();
        propagation.disable();
      })()),
  };
}

/** The no-op tracer used when tracing is off: spans cost next to nothing. */
export const noopTracer = (): Tracer => trace.getTracer(TRACER_NAME);
