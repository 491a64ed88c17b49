"""Pure-PyTorch core of the STEM video editing pack (no ComfyUI import).

Modules: em (EM bases), attention (STEM-SA and baseline contexts), ddim (inversion and sampling in
sigma space), metrics (PSNR/SSIM/warp error), video_io (decoding), tiny_vae (weight-free test VAE).
"""
