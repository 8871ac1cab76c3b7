# Ceiling of intent-constrained lists on the MovieLens-100K cold-start test users
# (benches/results/coldstart.md). Needs the catalog of benches/coldstart.sh in
# work/ml/catalog and numpy (.venv/bin/python benches/coldstart_ceiling.py).
import json, collections, struct, sys
import numpy as np
D = "../shared/data/ml-100k"
def fnv(b):
    h = 0xcbf29ce484222325
    for x in b:
        h ^= x; h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h
def group(u, f=0.3):
    x = fnv(b"genrec-cold-start:" + u.encode())
    if ((x >> 1) % 1000000) >= f * 1000000: return "train"
    return "valid" if x & 1 == 0 else "test"
items = [r["id"] for r in json.load(open("work/ml/catalog/items.json"))]
b = open("work/ml/catalog/catalog.safetensors", "rb").read()
n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); m = h["semantic_ids"]; s, e = m["data_offsets"]
sids = np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.uint32).reshape(m["shape"])
first = {items[i]: int(sids[i][0]) for i in range(len(items))}
inter = json.load(open(f"{D}/ML100K.inter.json"))
pop = collections.Counter(); cpop = collections.Counter()
for u, seq in inter.items():
    if group(u) == "train":
        for x in seq: pop[str(x)] += 1; cpop[first[str(x)]] += 1
bycl = collections.defaultdict(list)
for i, _ in pop.most_common(): bycl[first[i]].append(i)
test = [[str(x) for x in seq[:10]] for u, seq in inter.items() if group(u) == "test"]
def dcg(lst, rel): return sum(1 / np.log2(i + 2) for i, x in enumerate(lst[:10]) if x in rel)
idcg = sum(1 / np.log2(i + 2) for i in range(10))
def score(lists):
    r = np.mean([len(set(l[:10]) & set(t)) / 10 for l, t in zip(lists, test)])
    nd = np.mean([dcg(l, set(t)) / idcg for l, t in zip(lists, test)])
    return round(r, 4), round(nd, 4)
def fill(cl):  # quotas 4/3/3, popularity inside each cluster
    q = [4, 3, 3]; out = []
    for c, k in zip(cl, q): out += bycl[c][:k]
    return out
top = [i for i, _ in pop.most_common(10)]
print("users", len(test))
print("popularity", score([top] * len(test)))
print("3 most popular clusters, popular items inside", score([fill([c for c, _ in cpop.most_common(3)])] * len(test)))
# oracle: each user's 3 clusters holding most of their first 10 items
orc = []
for t in test:
    cc = collections.Counter(first[x] for x in t)
    orc.append(fill([c for c, _ in cc.most_common(3)]))
print("oracle clusters per user, popular items inside", score(orc))
print("popularity top-10 spans clusters", sorted(set(first[i] for i in top)))
