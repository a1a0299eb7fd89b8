# ruff: noqa
# The code cells of BVLC Caffe's examples/01-learning-lenet.ipynb ("Solving in Python with LeNet"), run
# with pyskim on Fashion-MNIST. Copied from Caffe under its BSD 2-Clause licence: Copyright (c)
# 2014-2017 The Regents of the University of California (Regents) and the respective contributors; see
# ../shared/models/bvlc/LICENSE (also ../LICENSE of a Caffe checkout).
#
# Changes from the notebook, and nothing else:
# * `import caffe` -> `import pyskim as caffe`; `from caffe import ...` / `from caffe.proto import ...`
#   -> `from pyskim import ...` / `from pyskim.proto import ...` (the same modules; without
#   pyskim.install_caffe_alias() there is no module named "caffe" to import from).
# * The notebook's Python 2 is converted: print() calls, and `niter // 10` for Python 2's integer `/`.
# * IPython magics and shell escapes are removed or replaced by Python equivalents: `%matplotlib
#   inline` and `%%time` dropped, `!cat FILE` -> print(open(FILE).read()). Plots go to matplotlib's
#   Agg backend and the open figures are saved under <work folder>/examples/figures at the end.
# * No downloads: `!data/mnist/get_mnist.sh` and `!examples/mnist/create_mnist.sh` are replaced by
#   _caffe_root.prepare(), which makes mnist/mnist_{train,test}_lmdb from the Fashion-MNIST idx files
#   in ../shared/datasets/fashion-mnist with pyskim's convert_mnist_data tool (same format as MNIST).
# * The iteration counts come from the variables below (the notebook's values by default), so that a
#   quick run is possible: PYSKIM_LENET_NITER=10 PYSKIM_LENET_TEST_ITERS=5 PYSKIM_LENET_CUSTOM_NITER=10.
# * The notebook writes its training loop (cell 15) and its loss / accuracy plot (cell 16) a second
#   time for the custom net of section 6; here each is one function, train_and_test() and
#   plot_train_test(), which both sections call with their own iteration counts and plot title.
#
# Usage: python examples/01_learning_lenet.py [WORK_FOLDER]   (default $PYSKIM_EXAMPLES_ROOT or ./caffe_root)
import os

NITER = int(os.environ.get('PYSKIM_LENET_NITER', 200))              # notebook: niter = 200
TEST_ITERS = int(os.environ.get('PYSKIM_LENET_TEST_ITERS', 100))    # notebook: range(100) test batches
CUSTOM_NITER = int(os.environ.get('PYSKIM_LENET_CUSTOM_NITER', 250))  # notebook: niter = 250 (section 6)

import _caffe_root

_caffe_root.prepare("01_learning_lenet", mnist=True)    # lays out WORK_FOLDER and cd's to its examples/

# # Solving in Python with LeNet
# ### 1. Setup
# * Set up the Python environment: we'll use the `pylab` import for numpy and plot inline.

# In[1]:

from pylab import *
# %matplotlib inline   (IPython magic, removed)

# * Import `caffe`, adding it to `sys.path` if needed. Make sure you've built pycaffe.

# In[2]:

caffe_root = '../'  # this file should be run from {caffe_root}/examples (otherwise change this line)

import sys
sys.path.insert(0, caffe_root + 'python')
import pyskim as caffe

# * We'll be using the provided LeNet example data and networks (make sure you've downloaded the data
#   and created the databases, as below).

# In[3]:

# run scripts from caffe root
import os
os.chdir(caffe_root)
# Download data
# !data/mnist/get_mnist.sh        (no download: _caffe_root.prepare() used ../shared's Fashion-MNIST)
# Prepare data
# !examples/mnist/create_mnist.sh (done by _caffe_root.prepare() with pyskim's convert_mnist_data)
# back to examples
os.chdir('examples')

# ### 2. Creating the net
# Now let's make a variant of LeNet, the classic 1989 convnet architecture.

# In[4]:

from pyskim import layers as L, params as P

def lenet(lmdb, batch_size):
    # our version of LeNet: a series of linear and simple nonlinear transformations
    n = caffe.NetSpec()

    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1./255), ntop=2)

    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 =   L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss =  L.SoftmaxWithLoss(n.score, n.label)

    return n.to_proto()

with open('mnist/lenet_auto_train.prototxt', 'w') as f:
    f.write(str(lenet('mnist/mnist_train_lmdb', 64)))

with open('mnist/lenet_auto_test.prototxt', 'w') as f:
    f.write(str(lenet('mnist/mnist_test_lmdb', 100)))

# The net has been written to disk in a more verbose but human-readable serialization format using
# Google's protobuf library. Let's take a look at the train net.

# In[5]:

print(open('mnist/lenet_auto_train.prototxt').read())  # !cat mnist/lenet_auto_train.prototxt

# Now let's see the learning parameters, which are also written as a `prototxt` file (already provided
# on disk).

# In[6]:

print(open('mnist/lenet_auto_solver.prototxt').read())  # !cat mnist/lenet_auto_solver.prototxt

# ### 3. Loading and checking the solver
# * Let's pick a device and load the solver.

# In[7]:

caffe.set_device(0)
caffe.set_mode_gpu()

### load the solver and create train and test nets
solver = None  # ignore this workaround for lmdb data (can't instantiate two solvers on the same data)
solver = caffe.SGDSolver('mnist/lenet_auto_solver.prototxt')

# * To get an idea of the architecture of our net, we can check the dimensions of the intermediate
#   features (blobs) and parameters.

# In[8]:

# each output is (batch size, feature dim, spatial dim)
[(k, v.data.shape) for k, v in solver.net.blobs.items()]

# In[9]:

# just print the weight sizes (we'll omit the biases)
[(k, v[0].data.shape) for k, v in solver.net.params.items()]

# * Before taking off, let's check that everything is loaded as we expect. We'll run a forward pass on
#   the train and test nets and check that they contain our data.

# In[10]:

solver.net.forward()  # train net
solver.test_nets[0].forward()  # test net (there can be more than one)

# In[11]:

# we use a little trick to tile the first eight images
imshow(solver.net.blobs['data'].data[:8, 0].transpose(1, 0, 2).reshape(28, 8*28), cmap='gray'); axis('off')
print('train labels:', solver.net.blobs['label'].data[:8])

# In[12]:

imshow(solver.test_nets[0].blobs['data'].data[:8, 0].transpose(1, 0, 2).reshape(28, 8*28), cmap='gray'); axis('off')
print('test labels:', solver.test_nets[0].blobs['label'].data[:8])

# ### 4. Stepping the solver
# * Let's take one step of (minibatch) SGD and see what happens.

# In[13]:

solver.step(1)

# Do we have gradients propagating through our filters? Let's see the updates to the first layer, shown
# here as a 4 x 5 grid of 5 x 5 filters.

# In[14]:

imshow(solver.net.params['conv1'][0].diff[:, 0].reshape(4, 5, 5, 5)
       .transpose(0, 2, 1, 3).reshape(4*5, 5*5), cmap='gray'); axis('off')

# ### 5. Writing a custom training loop
# Something is happening. Let's run the net for a while, keeping track of a few things as it goes.

# In[15]:

# %%time   (IPython magic, removed)
def train_and_test(solver, niter, test_interval, output=None):
    """The custom training loop of cell 15 (run again in section 6): returns the train loss of every
    step and the accuracy of every full test; fills `output`, when given, with the scores of the first
    test batch at every step."""
    # losses will also be stored in the log
    train_loss = zeros(niter)
    test_acc = zeros(int(np.ceil(niter / test_interval)))

    # the main solver loop
    for it in range(niter):
        solver.step(1)  # SGD by Caffe

        # store the train loss
        train_loss[it] = solver.net.blobs['loss'].data

        if output is not None:
            # store the output on the first test batch
            # (start the forward pass at conv1 to avoid loading new data)
            solver.test_nets[0].forward(start='conv1')
            output[it] = solver.test_nets[0].blobs['score'].data[:8]

        # run a full test every so often
        # (Caffe can also do this for us and write to a log, but we show here
        #  how to do it directly in Python, where more complicated things are easier.)
        if it % test_interval == 0:
            print('Iteration', it, 'testing...')
            correct = 0
            for test_it in range(TEST_ITERS):
                solver.test_nets[0].forward()
                correct += sum(solver.test_nets[0].blobs['score'].data.argmax(1)
                               == solver.test_nets[0].blobs['label'].data)
            test_acc[it // test_interval] = correct / 1e4
    return train_loss, test_acc

niter = NITER
test_interval = 25
output = zeros((niter, 8, 10))
train_loss, test_acc = train_and_test(solver, niter, test_interval, output)

# * Let's plot the train loss and test accuracy.

# In[16]:

def plot_train_test(niter, test_interval, train_loss, test_acc, title):
    """The plot of cell 16 (drawn again in section 6): train loss and test accuracy against the
    iteration, titled `title` formatted with the last accuracy."""
    _, ax1 = subplots()
    ax2 = ax1.twinx()
    ax1.plot(arange(niter), train_loss)
    ax2.plot(test_interval * arange(len(test_acc)), test_acc, 'r')
    ax1.set_xlabel('iteration')
    ax1.set_ylabel('train loss')
    ax2.set_ylabel('test accuracy')
    ax2.set_title(title.format(test_acc[-1]))

plot_train_test(niter, test_interval, train_loss, test_acc, 'Test Accuracy: {:.2f}')

# * Since we saved the results on the first test batch, we can watch how our prediction scores evolved.

# In[17]:

for i in range(8):
    figure(figsize=(2, 2))
    imshow(solver.test_nets[0].blobs['data'].data[i, 0], cmap='gray')
    figure(figsize=(10, 2))
    imshow(output[:50, i].T, interpolation='nearest', cmap='gray')
    xlabel('iteration')
    ylabel('label')

# * Note that these are the "raw" output scores rather than the softmax-computed probability vectors.

# In[18]:

for i in range(8):
    figure(figsize=(2, 2))
    imshow(solver.test_nets[0].blobs['data'].data[i, 0], cmap='gray')
    figure(figsize=(10, 2))
    imshow(exp(output[:50, i].T) / exp(output[:50, i].T).sum(0), interpolation='nearest', cmap='gray')
    xlabel('iteration')
    ylabel('label')

# ### 6. Experiment with architecture and optimization
# By default this defines a simple linear classifier as a baseline.

# In[19]:

train_net_path = 'mnist/custom_auto_train.prototxt'
test_net_path = 'mnist/custom_auto_test.prototxt'
solver_config_path = 'mnist/custom_auto_solver.prototxt'

### define net
def custom_net(lmdb, batch_size):
    # define your own net!
    n = caffe.NetSpec()

    # keep this data layer for all networks
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1./255), ntop=2)

    # EDIT HERE to try different networks
    # this single layer defines a simple linear classifier
    # (in particular this defines a multiway logistic regression)
    n.score =   L.InnerProduct(n.data, num_output=10, weight_filler=dict(type='xavier'))

    # EDIT HERE this is the LeNet variant we have already tried
    # n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    # n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    # n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
    # n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    # n.fc1 =   L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    # EDIT HERE consider L.ELU or L.Sigmoid for the nonlinearity
    # n.relu1 = L.ReLU(n.fc1, in_place=True)
    # n.score =   L.InnerProduct(n.fc1, num_output=10, weight_filler=dict(type='xavier'))

    # keep this loss layer for all networks
    n.loss =  L.SoftmaxWithLoss(n.score, n.label)

    return n.to_proto()

with open(train_net_path, 'w') as f:
    f.write(str(custom_net('mnist/mnist_train_lmdb', 64)))
with open(test_net_path, 'w') as f:
    f.write(str(custom_net('mnist/mnist_test_lmdb', 100)))

### define solver
from pyskim.proto import caffe_pb2
s = caffe_pb2.SolverParameter()

# Set a seed for reproducible experiments:
# this controls for randomization in training.
s.random_seed = 0xCAFFE

# Specify locations of the train and (maybe) test networks.
s.train_net = train_net_path
s.test_net.append(test_net_path)
s.test_interval = 500  # Test after every 500 training iterations.
s.test_iter.append(100) # Test on 100 batches each time we test.

s.max_iter = 10000     # no. of times to update the net (training iterations)

# EDIT HERE to try different solvers
# solver types include "SGD", "Adam", and "Nesterov" among others.
s.type = "SGD"

# Set the initial learning rate for SGD.
s.base_lr = 0.01  # EDIT HERE to try different learning rates
# Set momentum to accelerate learning by
# taking weighted average of current and previous updates.
s.momentum = 0.9
# Set weight decay to regularize and prevent overfitting
s.weight_decay = 5e-4

# Set `lr_policy` to define how the learning rate changes during training.
# This is the same policy as our default LeNet.
s.lr_policy = 'inv'
s.gamma = 0.0001
s.power = 0.75
# EDIT HERE to try the fixed rate (and compare with adaptive solvers)
# `fixed` is the simplest policy that keeps the learning rate constant.
# s.lr_policy = 'fixed'

# Display the current training loss and accuracy every 1000 iterations.
s.display = 1000

# Snapshots are files used to store networks we've trained.
# We'll snapshot every 5K iterations -- twice during training.
s.snapshot = 5000
s.snapshot_prefix = 'mnist/custom_net'

# Train on the GPU
s.solver_mode = caffe_pb2.SolverParameter.GPU

# Write the solver to a temporary file and return its filename.
with open(solver_config_path, 'w') as f:
    f.write(str(s))

### load the solver and create train and test nets
solver = None  # ignore this workaround for lmdb data (can't instantiate two solvers on the same data)
solver = caffe.get_solver(solver_config_path)

### solve
niter = CUSTOM_NITER  # EDIT HERE increase to train for longer
test_interval = niter // 10
train_loss, test_acc = train_and_test(solver, niter, test_interval)

plot_train_test(niter, test_interval, train_loss, test_acc, 'Custom Test Accuracy: {:.2f}')
