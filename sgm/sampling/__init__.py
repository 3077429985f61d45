"""Denoising: model sampling (denoisers), schedules, guiders, samplers and the ``sample`` entry point."""
