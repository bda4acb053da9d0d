"""Worker of the 2-process DDP test, in a module of its own: spawned
processes import it by its top-level name (tests/ is on sys.path, see
conftest.py), never as ``tests.x``, which mmsegmentation's own top-level
``tests`` package would shadow."""
import os

import torch
import torch.distributed as dist

from acmix_mm.models import ACmixResNet


def ddp_gradients_worker(rank: int, port: int, device: str, state: dict,
                         images: torch.Tensor, results: dict) -> None:
    """One of 2 ranks: backward of its half of ``images`` through DDP with
    attn_impl='auto'; rank 0 stores the averaged parameter gradients."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    model = ACmixResNet(26, norm_eval=True).to(device)
    model.load_state_dict(state)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[0] if device == 'cuda' else None)
    loss = sum(o.float().mean() for o in ddp(images[rank::2].to(device)))
    loss.backward()
    if rank == 0:
        results['grads'] = {
            name: param.grad.cpu()
            for name, param in model.named_parameters()
        }
    dist.destroy_process_group()
