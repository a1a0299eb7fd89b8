# ruff: noqa
# The code cells of BVLC Caffe's examples/net_surgery.ipynb ("Net Surgery"), run with pyskim. Copied
# from Caffe under its BSD 2-Clause licence: Copyright (c) 2014-2017 The Regents of the University of
# California (Regents) and the respective contributors; see ../shared/models/bvlc/LICENSE (also
# ../LICENSE of a Caffe checkout).
#
# Changes from the notebook, and nothing else:
# * `import caffe` -> `import pyskim as caffe`.
# * The notebook's Python 2 is converted as 2to3 does: print statements become print() calls.
# * IPython magics and shell escapes are removed or replaced by Python equivalents: `%matplotlib
#   inline` dropped; `!diff A B` -> difflib. Plots go to matplotlib's Agg backend and the open figures
#   are saved under <work folder>/examples/figures at the end.
# * No downloads: ../models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel is made by
#   _caffe_root.prepare() with RANDOM weights (the real ones are not available offline), so the
#   classification map is meaningless; the surgery itself (transplanting the fully connected weights
#   into convolutions) is exactly the notebook's.
# * Cells 7 and 8 repeat the same lines for two nets (take each layer's weights and biases, print their
#   shapes); here those lines are one function, extract_params(), which both cells call.
#
# Usage: python examples/net_surgery.py [WORK_FOLDER]   (default $PYSKIM_EXAMPLES_ROOT or ./caffe_root)
import _caffe_root

_caffe_root.prepare("net_surgery", caffenet=True)    # lays out WORK_FOLDER and cd's to its examples/

# # Net Surgery
# Caffe networks can be transformed to your particular needs by editing the model parameters. The
# data, diffs, and parameters of a net are all exposed in pycaffe.

# In[1]:

import numpy as np
import matplotlib.pyplot as plt
# %matplotlib inline   (IPython magic, removed)

# Make sure that caffe is on the python path:
caffe_root = '../'  # this file is expected to be in {caffe_root}/examples
import sys
sys.path.insert(0, caffe_root + 'python')

import pyskim as caffe

# configure plotting
plt.rcParams['figure.figsize'] = (10, 10)
plt.rcParams['image.interpolation'] = 'nearest'
plt.rcParams['image.cmap'] = 'gray'

# ## Designer Filters
# To show how to load, manipulate, and save parameters we'll design our own filters into a simple
# network that's only a single convolution layer.

# In[2]:

# Load the net, list its data and params, and filter an example image.
caffe.set_mode_cpu()
net = caffe.Net('net_surgery/conv.prototxt', caffe.TEST)
print("blobs {}\nparams {}".format(net.blobs.keys(), net.params.keys()))

# load image and prepare as a single input batch for Caffe
im = np.array(caffe.io.load_image('images/cat_gray.jpg', color=False)).squeeze()
plt.title("original image")
plt.imshow(im)
plt.axis('off')

im_input = im[np.newaxis, np.newaxis, :, :]
net.blobs['data'].reshape(*im_input.shape)
net.blobs['data'].data[...] = im_input

# The convolution weights are initialized from Gaussian noise while the biases are initialized to
# zero. These random filters give output somewhat like edge detections.

# In[3]:

# helper show filter outputs
def show_filters(net):
    net.forward()
    plt.figure()
    filt_min, filt_max = net.blobs['conv'].data.min(), net.blobs['conv'].data.max()
    for i in range(3):
        plt.subplot(1,4,i+2)
        plt.title("filter #{} output".format(i))
        plt.imshow(net.blobs['conv'].data[0, i], vmin=filt_min, vmax=filt_max)
        plt.tight_layout()
        plt.axis('off')

# filter the image with initial
show_filters(net)

# Raising the bias of a filter will correspondingly raise its output:

# In[4]:

# pick first filter output
conv0 = net.blobs['conv'].data[0, 0]
print("pre-surgery output mean {:.2f}".format(conv0.mean()))
# set first filter bias to 1
net.params['conv'][1].data[0] = 1.
net.forward()
print("post-surgery output mean {:.2f}".format(conv0.mean()))

# Altering the filter weights is more exciting since we can assign any kernel like Gaussian blur, the
# Sobel operator for edges, and so on.

# In[5]:

ksize = net.params['conv'][0].data.shape[2:]
# make Gaussian blur
sigma = 1.
y, x = np.mgrid[-ksize[0]//2 + 1:ksize[0]//2 + 1, -ksize[1]//2 + 1:ksize[1]//2 + 1]
g = np.exp(-((x**2 + y**2)/(2.0*sigma**2)))
gaussian = (g / g.sum()).astype(np.float32)
net.params['conv'][0].data[0] = gaussian
# make Sobel operator for edge detection
net.params['conv'][0].data[1:] = 0.
sobel = np.array((-1, -2, -1, 0, 0, 0, 1, 2, 1), dtype=np.float32).reshape((3,3))
net.params['conv'][0].data[1, 0, 1:-1, 1:-1] = sobel  # horizontal
net.params['conv'][0].data[2, 0, 1:-1, 1:-1] = sobel.T  # vertical
show_filters(net)

# ## Casting a Classifier into a Fully Convolutional Network
# Let's take the standard Caffe Reference ImageNet model "CaffeNet" and transform it into a fully
# convolutional net for efficient, dense inference on large inputs.

# In[6]:

# !diff net_surgery/bvlc_caffenet_full_conv.prototxt ../models/bvlc_reference_caffenet/deploy.prototxt
import difflib; print(''.join(difflib.unified_diff(open('../models/bvlc_reference_caffenet/deploy.prototxt').readlines(), open('net_surgery/bvlc_caffenet_full_conv.prototxt').readlines())))

# The only differences needed in the architecture are to change the fully connected classifier inner
# product layers into convolutional layers with the right filter size -- 6 x 6 -- and stride 1 for
# dense classification.

# In[7]:

def extract_params(net, names):
    """{name: (weights, biases)} of the layers `names`, printing their shapes (what cells 7 and 8 both do)."""
    layer_params = {pr: (net.params[pr][0].data, net.params[pr][1].data) for pr in names}

    for name in names:
        print('{} weights are {} dimensional and biases are {} dimensional'.format(name, layer_params[name][0].shape, layer_params[name][1].shape))
    return layer_params

# Load the original network and extract the fully connected layers' parameters.
net = caffe.Net('../models/bvlc_reference_caffenet/deploy.prototxt',
                '../models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel',
                caffe.TEST)
params = ['fc6', 'fc7', 'fc8']
# fc_params = {name: (weights, biases)}
fc_params = extract_params(net, params)

# Consider the shapes of the inner product parameters. The weight dimensions are the output and input
# sizes while the bias dimension is the output size.

# In[8]:

# Load the fully convolutional network to transplant the parameters.
net_full_conv = caffe.Net('net_surgery/bvlc_caffenet_full_conv.prototxt',
                          '../models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel',
                          caffe.TEST)
params_full_conv = ['fc6-conv', 'fc7-conv', 'fc8-conv']
# conv_params = {name: (weights, biases)}
conv_params = extract_params(net_full_conv, params_full_conv)

# The convolution weights are arranged in output x input x height x width dimensions. To map the inner
# product weights to convolution filters, we could roll the flat inner product vectors into channel x
# height x width filter matrices, but actually these are identical in memory (as row major arrays) so
# we can assign them directly. Let's transplant!

# In[9]:

for pr, pr_conv in zip(params, params_full_conv):
    conv_params[pr_conv][0].flat = fc_params[pr][0].flat  # flat unrolls the arrays
    conv_params[pr_conv][1][...] = fc_params[pr][1]

# Next, save the new model weights.

# In[10]:

net_full_conv.save('net_surgery/bvlc_caffenet_full_conv.caffemodel')

# To conclude, let's make a classification map from the example cat image and visualize the
# confidence of "tiger cat" as a probability heatmap. This gives an 8-by-8 prediction on overlapping
# regions of the 451 x 451 input.

# In[11]:

import numpy as np
import matplotlib.pyplot as plt

# load input and configure preprocessing
im = caffe.io.load_image('images/cat.jpg')
transformer = caffe.io.Transformer({'data': net_full_conv.blobs['data'].data.shape})
transformer.set_mean('data', np.load('../python/caffe/imagenet/ilsvrc_2012_mean.npy').mean(1).mean(1))
transformer.set_transpose('data', (2,0,1))
transformer.set_channel_swap('data', (2,1,0))
transformer.set_raw_scale('data', 255.0)
# make classification map by forward and print prediction indices at each location
out = net_full_conv.forward_all(data=np.asarray([transformer.preprocess('data', im)]))
print(out['prob'][0].argmax(axis=0))
# show net input and confidence map (probability of the top prediction at each location)
plt.subplot(1, 2, 1)
plt.imshow(transformer.deprocess('data', net_full_conv.blobs['data'].data[0]))
plt.subplot(1, 2, 2)
plt.imshow(out['prob'][0,281])
