"""The jobs: parse arguments, orchestrate library calls, write reports (`monai-disc`, the demo, the comparison,
the lambda sweep, slide generation). The library (data, transforms, masks, networks, inferers, engines, metrics)
never imports this package."""
