"""The MFuser network as nn.Modules, one concept per file. In the order the data flows:

1. ``encoders``: the frozen towers (DINOv2 as the VFM; EVA02-CLIP, CLIP or SigLIP as the VLM), stepped block by block.
2. ``mvfuser``: the MVFuser, a selective-scan branch and a conv branch, gated, over the two token streams.
3. ``backbone``: the fused backbone that runs both towers in lock-step with an MVFuser after every block.
4. ``text``: the prompt text encoder (learned contexts around class names) and the frozen text tower.
5. ``context_decoder``: the MTEnhancer / context decoder that refines the text embeddings with visual context.
6. ``position_encoding``: sine position encodings for the pixel decoder and the head.
7. ``pixel_decoder``: the multi-scale deformable-attention pixel decoder.
8. ``decode_head``: the Mask2Former-style head, one text query per class.
9. ``mfuser``: the assembly, ``MFuser`` and ``build_mfuser``.

Nothing here reads files or knows about deployment; configs stop at ``build_mfuser``.
"""
