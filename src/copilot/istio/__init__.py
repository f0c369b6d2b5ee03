"""Istio config: the kinds Copilot emits and the pure builder from routing state to them."""
