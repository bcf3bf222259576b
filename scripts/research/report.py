"""Collect data/research/results/*.json into a markdown table (stdout)."""
import glob, json, os, sys
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
rows = []
for f in sorted(glob.glob(os.path.join(ROOT, 'data', 'research', 'results', '*.json'))):
    if os.path.basename(f).startswith('bpb'):
        continue
    R = json.load(open(f)); s = os.path.basename(f).split('_')[0]
    rows.append((s, R.get('method'), R.get('target', 1), R))
rows.sort(key=lambda t: (t[0], t[2], t[1]))
print('| set | method | target | units | variant | retrieval | achieved ratio | plan ratio (c=3840) | predicted s | calib s |')
print('|---|---|---|---|---|---|---|---|---|---|')
for s, m, t, R in rows:
    v = R.get('variant') or {}
    vs = 'G%s/Gc%s%s w%s %s' % (v.get('G'), v.get('Gc'), ' rot' if v.get('rot') else '', v.get('w'), v.get('score')) if v else ''
    cs = R.get('calib_seconds'); 
    print('| %s | %s | %g | %s | %s | %d/%d | %.2f | %s | %s | %s |' % (
        s, m, t, R.get('units', ''), vs, R['correct'], R['total'], R['achieved_ratio'],
        '%.2f' % R['plan_ratio'] if 'plan_ratio' in R else '', '%.4f' % R['predicted'] if 'predicted' in R else '',
        '%.0f' % cs if cs else ''))
