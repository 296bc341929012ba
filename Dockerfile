# quota-authority image. Node 24 runs the TypeScript sources directly (type stripping), so there is no build step:
# the first stage only installs the production dependencies; the final stage has no npm cache and no build tools.
# The uid/gid 10001 match the Helm chart's securityContext (runAsUser/runAsGroup/fsGroup).
FROM node:24.22.3-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Install scripts stay blocked (npm 11 allowScripts in package.json); no dev dependencies.
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM node:24.22.3-bookworm-slim
ENV NODE_ENV=production \
    QUOTA_DATA_DIR=/data
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json package-lock.json ./
COPY bin ./bin
COPY scripts/node ./scripts/node
COPY src ./src
RUN ln -s /app/bin/quota-authority /usr/local/bin/quota-authority \
 && mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
EXPOSE 50051 8080
ENTRYPOINT ["quota-authority"]
CMD ["serve"]
