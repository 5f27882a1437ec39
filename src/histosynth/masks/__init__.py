"""Label maps for layout-conditioned synthesis: label sets, GeoJSON rasterisation, PanNuke
import, the colour-deconvolution segmenter, and label-map stores beside the tile stores."""
