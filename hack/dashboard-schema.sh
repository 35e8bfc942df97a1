#!/usr/bin/env bash
# dashboard-schema.sh - type-checks every dashboard in dashboards/ against Grafana's published
# dashboard types (@grafana/schema's `Dashboard`): each JSON becomes
#   import { Dashboard } from '@grafana/schema'; const d: Dashboard = <json>;
# compiled with `tsc --noEmit --strict`. A field the types do not know, or a value of the wrong
# type, fails the check (object literals assigned to a type are checked for excess properties).
#
# One adaptation, no cast: the types declare enumerations as TypeScript string enums
# (ThresholdsMode.Absolute = 'absolute', MappingType.ValueToText = 'value', ...), and TypeScript
# does not accept the string "absolute" where the enum is expected, although it is exactly what
# Grafana writes to JSON. The check uses Json<Dashboard>: the same type with every string enum
# replaced by the union of its values (`${E}`), i.e. the type of the dashboard's JSON form.
# Grafana also writes a query variable's `definition` (the query as text, for the variables
# list), which VariableModel lacks: dashboards/concord.json leaves it out (Grafana shows the
# query instead).
#
# Versions are pinned: @grafana/schema 11.6.9 (Grafana 11's dashboard schema; the dashboard is
# schemaVersion 39) and typescript 5.9.3. Needs node/npm and the npm registry; hack/test.sh runs
# it when the registry answers. SCHEMA_VERSION / TS_VERSION override the pins; KEEP=1 keeps the temp dir.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCHEMA_VERSION=${SCHEMA_VERSION:-11.6.9}
TS_VERSION=${TS_VERSION:-5.9.3}
WORK=$(mktemp -d /tmp/dashboard-schema.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
echo '{"name":"concord-dashboard-schema","private":true}' > package.json
npm install --silent --no-audit --no-fund --save-exact \
  "@grafana/schema@$SCHEMA_VERSION" "typescript@$TS_VERSION" >/dev/null
echo "@grafana/schema $(node -p 'require("@grafana/schema/package.json").version'), typescript $(npx tsc --version)"

status=0
for json in "$ROOT"/dashboards/*.json; do
  name=$(basename "$json" .json)
  {
    echo "import { Dashboard } from '@grafana/schema';"
    echo '// The JSON form of T: string enums as the union of their string values.'
    echo 'type Json<T> = T extends string ? `${T}` : T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;'
    printf 'export const d: Json<Dashboard> = '
    cat "$json"
    echo ';'
  } > "$name.ts"
  if npx tsc --noEmit --strict --skipLibCheck --moduleResolution node --target es2020 "$name.ts"; then
    echo "$name.json: OK (no type errors against @grafana/schema Dashboard)"
  else
    echo "$name.json: type errors (above)"
    status=1
  fi
done
exit $status
