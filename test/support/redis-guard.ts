/**
 * A Lua prelude for tests: shadows `redis` for the rest of the script so that any command on a key not declared in
 * KEYS raises an error (Redis itself only refuses cross-slot keys in a cluster; proxies and Redis-compatible
 * servers that enforce declared keys refuse any). Prepended to every script of a RedisCounterStore built with
 * `{ scriptPrelude: DECLARED_KEYS_GUARD }`, it makes the whole contract suite prove that scripts touch declared
 * keys only.
 */
export const DECLARED_KEYS_GUARD = `
local redis = (function(real)
  local declared = {}
  for _, k in ipairs(KEYS) do declared[k] = true end
  local function guard(f)
    return function(cmd, ...)
      local key = ...
      if string.upper(cmd) ~= 'TIME' and not declared[key] then
        error('undeclared key ' .. tostring(key) .. ' touched by ' .. cmd)
      end
      -- (...), not (key, ...): TIME has no key, and an explicit nil argument is refused by redis.call
      return f(cmd, ...)
    end
  end
  return setmetatable({ call = guard(real.call), pcall = guard(real.pcall) }, { __index = real })
end)(redis)
`;
