"""BusinessData's read queries: each takes the database and returns plain data.

For other actors, the CLI and reports; they never write these tables.
"""

from __future__ import annotations

from .models import POLICIES, BusinessMachine, BusinessPolicyVersion, BusinessSlot, format_cad

# Vends BusinessMgr recorded as dispensed (its sales_vend table) from slots whose stock is
# counted, acknowledged since the stock was last set, and not counted yet.
_UNCOUNTED = ('FROM "business_slot" s JOIN "business_machine" m ON m."id" = s."machine_id" '
              'JOIN "sales_vend" v ON v."machine" = m."name" AND v."slot" = s."number" '
              'WHERE s."stock" IS NOT NULL AND v."state" = \'vended\' AND v."acked_at" >= s."stock_set" '
              'AND NOT EXISTS (SELECT 1 FROM "business_stock_move" c WHERE c."vend" = v."id")')
UNCOUNTED_SQL = f'SELECT v."id", v."machine", v."slot" {_UNCOUNTED} ORDER BY v."acked_at", v."id"'
# One slot's stock and its vends not counted yet, in one statement: one snapshot, so a count
# committed between two reads can never be seen in one and not the other.
STOCK_LEFT_SQL = ('SELECT s."stock", (SELECT COUNT(*) FROM "sales_vend" v WHERE v."machine" = m."name" '
                  'AND v."slot" = s."number" AND v."state" = \'vended\' AND v."acked_at" >= s."stock_set" '
                  'AND NOT EXISTS (SELECT 1 FROM "business_stock_move" c WHERE c."vend" = v."id")) '
                  'FROM "business_slot" s JOIN "business_machine" m ON m."id" = s."machine_id" '
                  'WHERE m."name" = ? AND s."number" = ?')



# -- query functions (for other actors and the CLI) ----------------------------

def machines(database) -> list[dict]:
    q = BusinessMachine.select().order_by(BusinessMachine.name).bind(database)
    return [{"name": m.name, "location": m.location, "created": m.created} for m in q]


def slots(database, machine: str) -> list[dict]:
    q = (BusinessSlot.select(BusinessSlot, BusinessMachine.name).join(BusinessMachine)
         .where(BusinessMachine.name == machine).order_by(BusinessSlot.number).bind(database))
    return [{"machine": machine, "slot": s.number, "product": s.product, "price_cents": s.price_cents,
             "price_cad": format_cad(s.price_cents), "relay": s.relay, "stock": s.stock, "updated": s.updated,
             "sticker_address": s.sticker_address}
            for s in q]


def _sql(database, sql: str) -> str:
    return sql if database.param == "?" else sql.replace("?", database.param)


def stock_left(database, machine: str, slot: int) -> int | None:
    """Items in a slot now: its stock less the vends BusinessMgr recorded that are not
    counted yet (None: the stock is not counted, or no such slot). Needs BusinessMgr's
    ``sales_vend`` table."""
    row = database.execute_sql(_sql(database, STOCK_LEFT_SQL), (machine, slot)).fetchone()
    if row is None or row[0] is None:
        return None
    return max(0, row[0] - row[1])


def uncounted_vends(database) -> list[tuple[str, str, int]]:
    """(vend id, machine, slot) of every vend not counted yet against its slot's stock."""
    if not database.table_exists("sales_vend"):  # business_mgr has never run here: nothing sold
        return []
    return [tuple(r) for r in database.execute_sql(UNCOUNTED_SQL).fetchall()]


def policy_versions(database, key: str | None = None) -> list[dict]:
    """Every stored version (oldest first), optionally of one key."""
    q = BusinessPolicyVersion.select().order_by(BusinessPolicyVersion.version)
    if key is not None:
        q = q.where(BusinessPolicyVersion.key == key)
    return [{"version": p.version, "key": p.key, "value": p.value, "created": p.created} for p in q.bind(database)]


def policy(database) -> dict:
    """The current value of every policy key (its latest version, else its default), typed:
    Decimal for ``*_cad`` keys, int for the others."""
    current = {key: default for key, (default, _, _) in POLICIES.items()}
    for p in policy_versions(database):  # ascending: the latest wins
        if p["key"] in current:
            current[p["key"]] = p["value"]
    return {key: POLICIES[key][2](value) for key, value in current.items()}
