"""Generative recommenders registered as RecBole models (found by ``recbole_gflowgr.registry.get_model``)."""
