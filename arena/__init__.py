"""The arena: autoregressive vs diffusion claims measured side by side on one backbone.

    python -m arena all --budget small --out arena/report      # every experiment, ~1 CPU hour
    python -m arena speed --budget tiny --out /tmp/arena        # one experiment, smoke size

Experiments (one module each, `run(ctx) -> Section`; EXPERIMENTS is the registry):
  speed   text sampling speed vs quality: AR + KV cache, masked diffusion (step sweep,
          confidence and threshold decoding), block diffusion; tokens/s, NFE, judge bits/byte,
          parser score, sample entropy; the speed-quality frontier.
  data    data-constrained training (Prabhudesai et al. 2025): AR vs MDLM on U unique tokens
          over many epochs, with the disputed controls (AR + dropout, AR + input masking).
  infill  fill in the middle of held-out code: masked diffusion with prefix and suffix vs AR
          with the prefix only; exact match and judge bits/byte of the span.
  blocks  AR as a special case of block diffusion: BD3 NELBO for B = 1 .. L beside AR NLL.
  images  on prompts: DiT, VAR, HART, raster AR, MaskGIT and Transfusion at one backbone and
          images seen: legibility by string length (seen and held-out strings), classifier
          FD, images/s at batch 1 and 64; Transfusion's reading vs an AR captioner.
  embeddings  AR vs diffusion backbones (MDLM, SEDD, UDLM) as embedding models after the same
          contrastive fine-tune, with the bidirectional-AR control: retrieval by document length.

Every model is trained by the one trainer (`train.trainer.train`) into `--runs/<budget>/<name>`
and reused when finished, so a second invocation only re-measures. Each experiment writes
`<out>/<name>.md`, `<out>/<name>.json` (results, resolved configs, seeds, compute) and PNG plots;
`all` also regenerates `<out>/README.md` from the sections present.
"""
