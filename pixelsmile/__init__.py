"""PixelSmile: continuous facial-expression editing (arXiv 2603.25728).

conditioning  prompt embeddings of neutral and target expressions; textual latent interpolation
              and blending
losses        flow matching, the symmetric joint loss, InfoNCE (L_SC) and the identity loss (L_ID)
qwen          the Qwen-Image-Edit backbone from a local folder (and tiny random ones for tests)
"""
