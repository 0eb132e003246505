"""``run``: one training + evaluation run through RecBole, ending in a result row. Never imports
``recbole.quick_start`` (it imports ray)."""
import sys
import time
from logging import getLogger

from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_gflowgr.config import Config
from recbole_gflowgr.data import prepare_dataset
from recbole_gflowgr.registry import OUR_MODELS, get_model, get_trainer
from recbole_gflowgr.results import append_row, make_row


def load_config(model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=()):
    return Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict,
                  cmd_args=cmd_args)


def prepare_data(config, logger=None):
    """Convert the source if needed, then RecBole's dataset and train/valid/test loaders."""
    prepare_dataset(config["dataset"], config["data_path"], config["source_path"], config["source_prefix"], logger)
    dataset = create_dataset(config)
    return dataset, data_preparation(config, dataset)


def run(model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=(), saved=True):
    """Train ``model`` on ``dataset``, evaluate on valid/test, append a row under ``results_dir``; returns the row."""
    start = time.time()
    config = load_config(model, dataset, config_file_list, config_dict, cmd_args)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(" ".join(sys.argv))
    logger.info(config)

    dataset, (train_data, valid_data, test_data) = prepare_data(config, logger)
    logger.info(dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"], config)(config, model)

    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved,
                                                      show_progress=config["show_progress"])
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")

    finetune = config["finetune"] if config["model"] in OUR_MODELS else "none"
    row = make_row(config, finetune, best_valid_result, test_result, time.time() - start,
                   extra={"epochs": len(getattr(trainer, "epoch_times", [])), "epoch_s": trainer.mean_epoch_time(),
                          "checkpoint": trainer.saved_model_file if saved else None})
    path = append_row(row, config["results_dir"])
    logger.info(f"result row appended to {path}")
    return row
