import time, torch, sys
from recon_support import *
from mixquant_core.reconstruct import *
def test_probe():
    torch.set_num_threads(1)
    print("threads", torch.get_num_threads(), torch.get_num_interop_threads(), sys.gettrace(), torch.is_grad_enabled(), torch.is_anomaly_enabled())
    model = tiny_chain(); ws = workspace(model); plan = ws.plan_from_bits(MIXED_BITS)
    t=time.time(); c=time.process_time()
    r = reconstruct_plan(model, plan, images(), ReconConfig(iters=200, batch_size=8, eval_samples=16))
    print("took", round(time.time()-t,1), round(time.process_time()-c,1))
