"""Exporters: turn a finished representation into files a person opens.

``dream3d.export.mesh``: marching cubes, xatlas UVs, texture baking, GLB / OBJ+MTL+PNG / PLY writers and a loader.
``dream3d.export.video``: turntable videos. Import the submodule you need; this package imports nothing heavy.
"""
