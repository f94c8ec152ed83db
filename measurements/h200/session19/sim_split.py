# A host model of qgemv_ring's job walk with split (quant_ring.cu), to check coverage before a card runs it.
import itertools
def sim(pairs, grid, NW, units, BU, split=True, glu=True, SPLIT=True):
    stride = grid * NW; slots = 2 * units if SPLIT else units; nb = -(-slots // BU)
    full = pairs // stride * stride; rem = pairs - full
    halves = split and glu and SPLIT and rem > 0 and 2 * rem <= stride
    whole = full if halves else pairs
    seen = {}
    stores = {}
    for g in range(stride):
        hr, hp = g & 1, full + (g >> 1)
        hb0, hb1 = hr * units // BU, -(-((hr + 1) * units) // BU)
        job = lambda q: q if q < whole else (hp if halves and g < 2 * rem and q == g + full else -1)
        fb = lambda q: hb0 if q >= whole else 0
        lb_ = lambda q: hb1 if q >= whole else nb
        # issue sequence
        issued = []; lq = g; lb = fb(lq)
        while job(lq) >= 0:
            issued.append((job(lq), lb)); lb += 1
            if lb == lb_(lq): lq += stride; lb = fb(lq)
        consumed = []
        cq = g
        while (cp := job(cq)) >= 0:
            half = cq >= whole
            for cb in range(fb(cq), lb_(cq)):
                consumed.append((cp, cb))
                for lane in range(32):
                    for i in range(BU // 32):
                        su = BU * cb + lane + 32 * i
                        if su < slots and (not half or (su >= units) == hr):
                            r = int(su >= units); u = su - r * units
                            key = (cp, r, u); assert key not in seen, key; seen[key] = (g, lane)
            if half:
                if hr: break
                stores[cp] = stores.get(cp, 0) + 1; break
            stores[cp] = stores.get(cp, 0) + 1
            cq += stride
        assert issued == consumed, (g, issued, consumed)
    assert len(seen) == pairs * 2 * units, (len(seen), pairs * 2 * units)
    assert all(stores.get(p) == 1 for p in range(pairs)), stores
    return halves
n_h = 0
for pairs, grid, NW, units, BU in itertools.product([1, 5, 38, 70, 75, 100, 11008], [1, 2, 3, 264], [8], [8, 16, 256, 688], [32, 64]):
    if pairs > 2000 and grid < 264: continue
    n_h += sim(pairs, grid, NW, units, BU)
print("ok, split engaged in", n_h, "configs")
