"""Run a trained model on image tiles or whole slides.

Usage:
  run_infer.py tile --input_dir=<dir> --output_dir=<dir> [options]
  run_infer.py wsi --input_dir=<dir> --output_dir=<dir> [options] [--input_mask_dir=<dir>]
               [--proc_mpp=<um> | --proc_mag=<x>] [--slide_mpp=<um>] [--tile_shape=<px>] [--resume]
  run_infer.py (-h | --help)

Options:
  --model_path=<path>      Checkpoint (.pt). Default: the model shipped with hovercrypt.
  --type_info_path=<path>  type_info.json with type names and colours; a missing file is an error.
                           Default: the model config's type_info, else the one shipped with
                           hovercrypt.
  --batch_size=<n>         Tiles per network batch. Default: the model's infer.batch_size (4;
                           raise it on a GPU).
  --gpu=<ids>              GPU id(s), e.g. 0; empty runs on the CPU [default: ].
  --input_mpp=<um>         (tile) resolution of the input images in um/px. Default: the
                           processing resolution stored in the model (no resampling).
  --tta                    Flip test-time augmentation (4 passes, averaged).
  --window=<px>            Network input window at inference (even px); 0 = the training window.
                           Default: the model's infer.window. See README, "Throughput".
  --window_border=<px>     Px dropped on each side of a large window's output (padded networks
                           see the window edge there). Default: the model's infer.window_border.
  --threads=<n>            torch CPU threads; 0 = one per core. Default: the model's infer.threads.
  --channels_last          Store the network's weights channels_last (NHWC) too.
  --backend=<name>         Network execution: auto, torch, openvino or onnxruntime (CPU only).
                           auto = OpenVINO on the CPU when installed, else torch.
                           Default: the model's infer.backend (auto). See README, "Throughput".
  --precision=<p>          OpenVINO arithmetic: auto, f32 or bf16; auto = bf16 on a CPU that
                           computes it natively (AVX512_BF16 or AMX), else f32.
                           Default: the model's infer.precision (auto).
  --postproc=<json>        Post-processing fields (see PostprocConfig) that replace the model's
                           stored values: a JSON file, or inline, e.g. '{"np_thresh": 0.6}'.
  --proc_mpp=<um>          (wsi) processing resolution. Default: the model's.
  --proc_mag=<x>           (wsi) processing magnification instead of --proc_mpp (10 um/px / x).
  --slide_mpp=<um>         (wsi) level-0 resolution for slides that do not store it.
  --input_mask_dir=<dir>   (wsi) tissue masks <stem>.png (any size, non-zero = tissue).
  --tile_shape=<px>        (wsi) processing region side in px at proc_mpp. Default: the model's
                           infer.tile_shape (1536).
  --no_tile_cache          (wsi) predict each region on its own, recomputing the tiles of the
                           region overlaps (default: every tile once per slide).
  --follow_um=<um>         (wsi, tile cache) run the tiles touching tissue, then every tile within
                           this distance of a predicted crypt pixel, until the crypts are whole;
                           0 = every tile within margin_um of tissue (slower). Default: the
                           model's infer.follow_um (32).
  --resume                 (wsi) continue a killed run from its last finished chunk.
                           (Concurrent runs on one --output_dir never share a slide: each slide
                           is locked while processed; see README, "Cohorts".)
  --workers=<n>            (wsi) post-processing threads; 0 = in the main thread. Default: the
                           model's infer.postproc_workers (2).
  --ray=<address>          (wsi) run each slide as a Ray task: local (start Ray on this machine),
                           auto (join the running cluster), or ray://head:10001. Needs the extra:
                           pip install -e ".[ray]". Outputs and resume as without --ray.
  --ray_workers=<n>        (wsi, --ray=local) slides processed at once. Default: 2.
  --ray_cpus_per_slide=<n>  (wsi, --ray) CPUs each slide task reserves. Default: 1.
  --ray_gpus_per_slide=<n>  (wsi, --ray) GPUs each slide task reserves; > 0 runs the network on
                           the GPU Ray assigns (use instead of --gpu). Default: 0.
  -h --help                Show this help.

Exit codes: 0 done; 1 some images or slides failed (the others are written); 2 bad options or input.
"""

import sys

from docopt import docopt


def main(argv: list[str] | None = None) -> int:
    args = docopt(__doc__, argv=argv)
    if args["tile"]:
        from hovercrypt.infer.tile_cli import run_tile_cli

        return run_tile_cli(args)
    from hovercrypt.infer.wsi_cli import run_wsi_cli

    return run_wsi_cli(args)


if __name__ == "__main__":
    sys.exit(main())
