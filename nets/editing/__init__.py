"""Editing with a trained model: DDIM inversion and decoding (``inversion``), interpolation of
latents (``inversion.interpolate``), inpainting with RePaint-style resampling (``inpaint``) and
the masks it takes (``masks``). The math is diffusion_core.editing; the command is nets/edit.py.
"""
