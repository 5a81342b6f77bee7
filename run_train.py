"""Train HoVer-Net (or the UNet baseline) on patches made by extract_patches.py.

Usage:
  run_train.py [options]
  run_train.py --list_models
  run_train.py (-h | --help)

Options:
  --config=<spec>            Preset name (default, glas), a .json file, or a .py file defining
                             CONFIG. Default: config.py next to this script.
  --data_dir=<dir>           Patch folder holding train/ and valid/ (from extract_patches.py).
                             Default: data.patch_dir of the config.
  --log_dir=<dir>            Output folder (checkpoints, CSV, plot, TensorBoard).
                             Default: logs/<config name>_<model>; on --resume the checkpoint's folder.
  --epochs=<n>               Epochs per phase: one number for every phase ("2") or one per phase ("2,3").
  --batch_size=<n>           Batch size of every phase (default: per phase, from the config).
  --resume=<path>            Continue a run: a checkpoint file, or a log folder (uses its last.pt).
  --encoder=<name>           timm encoder (resnet50, resnet18, ...). UNet: "none" = classic UNet.
  --pretrained=<path>        Local encoder weights (timm or torchvision state dict).
  --init_from=<ckpt>         Start from all weights of a hovercrypt checkpoint with the same model
                             (fine-tuning; a new schedule, unlike --resume). Sets train.init_from.
  --mode=<mode>              Network windows: original (270 -> 80) or fast (256 -> 164).
  --model=<arch>             Model family: hovernet or unet (--list_models prints all registered).
  --gpu=<ids>                GPU id(s): "0", or "0,1" for DDP over several GPUs; empty = CPU.
                             Without a GPU training runs on the CPU [default: 0].
  --seed=<n>                 Random seed (weight init, shuffling, augmentation).
  --num_workers=<n>          DataLoader worker processes.
  --amp=<amp>                Mixed precision: auto, bf16, fp16 (CUDA only) or none.
  --max_steps_per_epoch=<n>  Cap the batches per epoch (quick runs and tests).
  --no_progress              No progress bars (for log files).
  --list_models              Print the registered model families, one per line, and exit.
  -h --help                  Show this help.
"""

import sys
from pathlib import Path

from docopt import docopt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = docopt(__doc__, argv=argv)
    from hovercrypt.train.cli import run

    return run(args, __file__, argv, default_config=Path(__file__).with_name("config.py"))


if __name__ == "__main__":
    sys.exit(main())
