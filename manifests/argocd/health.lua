-- Argo CD health check for slotkeeper.io/ModelEndpoint.
-- Installed as resource.customizations.health.slotkeeper.io_ModelEndpoint (argocd-cm-patch.yaml
-- carries this same text; tests/unit/test_argocd_health.py runs both against a table of statuses).
--
--   no status yet, or status.observedGeneration < metadata.generation -> Progressing
--   phase Healthy                                                     -> Healthy
--   phase Pending or Progressing                                      -> Progressing
--   phase Paused (spec.paused, or waiting for `slotkeeper promote`)   -> Suspended
--   phase Degraded                                                    -> Degraded
--   phase RolledBack (the new revision failed; stable still serves)   -> Degraded

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function message_of(status, type, fallback)
  local c = condition(status, type)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local hs = {}
local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local phase = status.phase
if phase == "Healthy" then
  hs.status = "Healthy"
  hs.message = message_of(status, "Ready", "Serving the stable revision")
elseif phase == "Progressing" or phase == "Pending" then
  hs.status = "Progressing"
  hs.message = message_of(status, "Progressing", "Rolling out")
elseif phase == "Paused" then
  hs.status = "Suspended"
  hs.message = message_of(status, "Progressing", "Paused")
elseif phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = message_of(status, "RolledBack", "The new revision was rolled back")
elseif phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = message_of(status, "Degraded", message_of(status, "Ready", "Degraded"))
elseif phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
