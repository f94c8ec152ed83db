"""One 3x3 stride-1 conv at YOLOv8s shapes (batch 1, C = O): the engine's F.conv2d, torch's, and the two
im2col-free forms tried (a GEMM a tap over strided views of the flat padded input, summed; one GEMM of the 9 stacked
taps then 9 shifted adds). Run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` (session11_conv.md says why)."""
import time, numpy as np, torch, engine
import engine.functional as F
def tm(f, n=20):
    f(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return np.median(ts)*1e3
for C, H in ((64, 80), (32, 160), (128, 40), (128, 80)):
    O=C
    x=np.random.randn(1,C,H,H).astype(np.float32); w=(np.random.randn(O,C,3,3)*0.05).astype(np.float32)
    xe, we = engine.tensor(x), engine.tensor(w)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    te = tm(lambda: F.conv2d(xe, we, padding=1))
    tt = tm(lambda: torch.nn.functional.conv2d(xt, wt, padding=1))
    # wide shifted GEMMs
    Wp=H+2
    xp=np.zeros((C,H+3,Wp),np.float32); xp[:,1:H+1,1:H+1]=x[0]
    flat=xp.reshape(C,-1)
    Ws=[np.ascontiguousarray(w[:,:,kh,kw]) for kh in range(3) for kw in range(3)]
    offs=[kh*Wp+kw for kh in range(3) for kw in range(3)]
    L=H*Wp
    def wide():
        acc=np.matmul(Ws[0], flat[:, offs[0]:offs[0]+L])
        tmp=np.empty_like(acc)
        for s in range(1,9):
            np.matmul(Ws[s], flat[:, offs[s]:offs[s]+L], out=tmp); acc+=tmp
        return acc.reshape(O,H,Wp)[:,:,:H]
    Wbig=np.ascontiguousarray(w.transpose(2,3,0,1).reshape(9*O,C))
    def big():
        Y=np.matmul(Wbig, flat).reshape(9,O,-1)
        acc=Y[0,:,offs[0]:offs[0]+L].copy()
        for s in range(1,9): acc+=Y[s,:,offs[s]:offs[s]+L]
        return acc.reshape(O,H,Wp)[:,:,:H]
    ref=torch.nn.functional.conv2d(xt,wt,padding=1).numpy()[0]
    assert np.allclose(wide(),ref,atol=1e-4), np.abs(wide()-ref).max()
    assert np.allclose(big(),ref,atol=1e-4)
    print(f"C={C} H={H}: engine {te:.2f} ms, torch {tt:.2f}, wide9 {tm(wide):.2f}, big+shift {tm(big):.2f}", flush=True)
