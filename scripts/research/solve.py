"""Multiple-choice knapsack over units (layers or (layer, KV head)) by dynamic
programming over bytes rounded UP to a 64-byte quantum (so plans never exceed
the budget in exact bytes).  Byte accounting = DESIGN.md s2.9 plus the evicted
tokens' codes and scales when eb > 0, at the table's compression point."""
import json, math, os, sys, numpy as np
sys.path.insert(0, os.path.dirname(__file__))
from moe_np import k_bytes, v_bytes, kept_count, Variant, full_bytes

def head_bytes(opt, c, var, D=64):
    keep, kb, vb = opt[:3]; eb = opt[3] if len(opt) > 3 else 0
    w = min(c, var.w); cand = c - w; m = kept_count(keep, cand)
    b = k_bytes(m, kb, D, var.G) + v_bytes(m, vb, D, var.Gc) + w * D * 4
    if eb and cand - m:
        b += k_bytes(cand - m, eb, D, var.G) + v_bytes(cand - m, eb, D, var.Gc)
    return b

def pareto(items):  # items: list of (bytes, s, payload) -> Pareto set
    items = sorted(items, key=lambda t: (t[0], t[1]))
    out = []
    for it in items:
        if not out or it[1] < out[-1][1] - 1e-15:
            out.append(it)
    return out

def dp_solve(units, budget, q=64):
    """units: list of lists of (bytes, s, payload).  Returns (payloads, bytes, s)."""
    Bq = int(budget // q)
    dp = np.zeros(Bq + 1); choices = []
    for items in units:
        items = pareto(items)
        new = np.full(Bq + 1, np.inf); arg = np.full(Bq + 1, -1, np.int32)
        for i, (b, s, _) in enumerate(items):
            cq = int(math.ceil(b / q))
            if cq > Bq:
                continue
            cand = dp[:Bq + 1 - cq] + s
            better = cand < new[cq:]
            new[cq:][better] = cand[better]; arg[cq:][better] = i
        dp = new; choices.append((items, arg))
        if not np.isfinite(dp).any():
            raise ValueError('infeasible budget')
    b = int(np.argmin(dp)); tot_s = dp[b]; picks = []
    for items, arg in reversed(choices):
        i = int(arg[b]); picks.append(items[i]); b -= int(math.ceil(items[i][0] / q))
    picks.reverse()
    return [p[2] for p in picks], sum(p[0] for p in picks), tot_s

def plan_from_table(table, units, ratio, var, allow=None, c=3840, L=12, Hkv=2):
    """table: dict with options and s_layer / s_head (research tables) or the committed
    moend table (tuples, s).  Returns plan[l] = [tuple per head], plan bytes, ratio, pred."""
    budget = math.floor(full_bytes(c) / ratio)
    if 'tuples' in table:  # committed per-layer table
        opts = [(t['keep'], t['kbits'], t['vbits'], 0) for t in table['tuples']]; sl = table['s']
    else:
        opts = [tuple(o) for o in table['options']]; sl = table['s_layer']
    keepi = [i for i, o in enumerate(opts) if allow is None or allow(o)]
    if units == 'layer':
        U = [[(Hkv * head_bytes(opts[i], c, var), sl[l][i], [opts[i]] * Hkv) for i in keepi] for l in range(L)]
        picks, b, s = dp_solve(U, budget)
        plan = picks
    else:
        sh = table['s_head']
        U = [[(head_bytes(opts[i], c, var), sh[l][h][i], opts[i]) for i in keepi] for l in range(L) for h in range(Hkv)]
        picks, b, s = dp_solve(U, budget)
        plan = [picks[l * Hkv:(l + 1) * Hkv] for l in range(L)]
    return plan, b, full_bytes(c) / b, s
