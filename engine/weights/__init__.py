"""Offline weight loading for HaineiFRDM (safetensors only, never a hub). See docs/weights.md."""
